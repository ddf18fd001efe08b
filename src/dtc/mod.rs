//! The DTC industry facts: catalogue, data items, writer and reader. Nothing here knows of rules.

pub mod catalogue;
pub mod items;
pub mod reader;
pub mod write;

pub use catalogue::{CatalogueError, FormatError, ValueError};
