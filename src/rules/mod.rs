pub mod decide;
pub mod engine;
pub mod explain;
pub mod load;
pub mod samples;
pub mod schema;
pub mod set;
pub mod template;
