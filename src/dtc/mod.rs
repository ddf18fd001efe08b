pub mod catalogue;
pub mod items;
pub mod reader;
pub mod write;
