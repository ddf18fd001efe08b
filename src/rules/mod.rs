//! Rules as data: engine, schema, templates, incoming flow descriptions, the rule set, its loader and gate, and the decision.

pub(crate) mod body;
pub mod decide;
pub mod engine;
pub mod explain;
pub(crate) mod fast;
mod files;
pub mod incoming;
mod incoming_samples;
pub mod load;
pub mod samples;
pub mod schema;
pub mod set;
pub mod template;

pub use engine::{CompileError, ConditionError, EvalError, RuleFailure, Subject};
pub use incoming_samples::IncomingSampleFailure;
pub use load::LoadError;
pub use samples::CaseFailure;
pub use schema::{PhotoError, SchemaError};
pub use template::{TemplateError, WriteError};
