pub mod answer;
pub mod auth;
pub mod clock;
pub mod finding;
pub mod names;
pub mod problem;
