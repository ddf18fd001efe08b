//! RFC 9457 problem answers: one catalogue of every failure the API can give.

use serde_json::{json, Value};

use crate::domain::finding::Finding;

/// Every way a request can fail, with what the client needs to act on it.
#[derive(Debug)]
pub(crate) enum Problem {
    Invalid(Vec<Finding>),
    Unauthorized,
    NotFound,
    /// The route exists but does not take this method; `allow` lists the ones it takes.
    MethodNotAllowed {
        allow: &'static str,
    },
    Conflict {
        request_id: String,
    },
    TooLarge {
        limit: u64,
    },
    UnsupportedMediaType,
    RateLimited {
        retry_after_secs: u64,
    },
    BodyTimeout,
    /// The body ended before its declared length, or its chunked framing was broken.
    BodyIncomplete,
    RuleFailed {
        rule: String,
    },
    StoreUnavailable,
    /// The memory for bodies in flight is taken: nothing was read.
    Busy {
        retry_after_secs: u64,
    },
}

impl Problem {
    /// (status, slug, title) — the one table.
    fn entry(&self) -> (u16, &'static str, &'static str) {
        match self {
            Problem::Invalid(_) => (400, "invalid-request", "The request body is not valid"),
            Problem::Unauthorized => (401, "unauthorized", "A known API key is required"),
            Problem::NotFound => (404, "not-found", "Not found"),
            Problem::MethodNotAllowed { .. } => (405, "method-not-allowed", "Method not allowed"),
            Problem::Conflict { .. } => (409, "job-id-conflict", "A different body was already accepted for this job_id"),
            Problem::BodyTimeout => (408, "body-timeout", "The request body was not received in time"),
            Problem::BodyIncomplete => (400, "body-incomplete", "The request body ended early or its framing is broken"),
            Problem::TooLarge { .. } => (413, "body-too-large", "The request body is too large"),
            Problem::UnsupportedMediaType => (415, "unsupported-media-type", "The body must be application/json"),
            Problem::RateLimited { .. } => (429, "rate-limited", "Too many requests for this key"),
            Problem::RuleFailed { .. } => (500, "rule-failed", "A rule failed while deciding this request"),
            Problem::StoreUnavailable => (503, "store-unavailable", "The request could not be stored; nothing was accepted"),
            Problem::Busy { .. } => (503, "busy", "Too many large bodies in flight; the body was not read"),
        }
    }

    pub fn status(&self) -> u16 {
        self.entry().0
    }

    /// The problem document.
    pub fn body(&self, instance: &str, request_id: &str) -> Value {
        let (status, slug, title) = self.entry();
        let detail = match self {
            Problem::Invalid(errors) => format!("{} problem{} found; see errors", errors.len(), if errors.len() == 1 { "" } else { "s" }),
            Problem::Unauthorized => "send the key in X-API-Key (or Authorization: Bearer)".into(),
            Problem::NotFound => "no such resource for this key".into(),
            Problem::MethodNotAllowed { .. } => "this route does not take that method".into(),
            Problem::Conflict { request_id } => format!(
                "job_id already accepted with a different body as request {request_id}; send the same body to get its answer again, or use a new job_id"
            ),
            Problem::TooLarge { limit } => format!("the limit is {limit} bytes"),
            Problem::UnsupportedMediaType => "send Content-Type: application/json".into(),
            Problem::RateLimited { retry_after_secs } => format!("retry after {retry_after_secs} s"),
            Problem::BodyTimeout => "send the whole body without long pauses".into(),
            Problem::BodyIncomplete => "send the whole body, as many bytes as Content-Length says, or well-formed chunks".into(),
            Problem::RuleFailed { rule } => format!("rule {rule} failed at run time; nothing was accepted; the operators have been told"),
            Problem::StoreUnavailable => "retry later".into(),
            Problem::Busy { retry_after_secs } => format!("retry after {retry_after_secs} s; nothing was accepted"),
        };
        let mut body = json!({
            "type": format!("/problems/{slug}"),
            "title": title,
            "status": status,
            "detail": detail,
            // The path as asked, cut short: an answer never echoes much of what a client sent.
            "instance": shorten(instance, 256),
            "request_id": request_id,
        });
        match self {
            Problem::Invalid(errors) => body["errors"] = json!(errors),
            Problem::RuleFailed { rule } => body["rule"] = json!(rule),
            Problem::Conflict { request_id } => body["existing_request_id"] = json!(request_id),
            _ => {}
        }
        body
    }
}

/// At most `max` bytes of `s` (on a character boundary), with "…" when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
