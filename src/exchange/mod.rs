//! The flows' way out (delivery of the outbox) and in (the inbox of incoming flows).

pub mod deliver;
pub mod inbound;
