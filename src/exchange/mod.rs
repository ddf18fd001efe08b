pub mod deliver;
pub mod inbound;
