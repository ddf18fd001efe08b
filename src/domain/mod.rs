//! The contract's own types, shared by every layer above.

pub mod answer;
pub mod auth;
pub mod clock;
pub mod finding;
pub mod names;
pub mod problem;

pub use names::{ConfiguredNameError, FlowIdError, NameError, ObjectNameError};
