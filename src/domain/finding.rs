//! A finding: one thing wrong (or worth a warning) in a request body.

use serde::{Deserialize, Serialize};

/// One problem found in a body: where, which rule (or schema keyword), and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub pointer: String,
    pub rule: String,
    pub message: String,
}

impl Finding {
    pub fn new(pointer: impl Into<String>, rule: impl Into<String>, message: impl Into<String>) -> Self {
        Finding { pointer: pointer.into(), rule: rule.into(), message: message.into() }
    }
}

/// Escapes one reference token of a JSON Pointer (RFC 6901).
pub(crate) fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}
