pub mod flows;
pub mod reader;
