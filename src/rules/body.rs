//! How rules see a request body: its blocks by short name, photos kept out, as rhai values. Read
//! by the rhai engine and by the fast path alike.

use rhai::{Dynamic, Map, INT};
use serde::Deserialize;
use serde_json::Value;

/// A distributor by the first two digits of the MPAN core.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distributor {
    pub id: String,
    pub name: String,
    pub mpid: String,
    pub kind: String,
}

/// The blocks of the body, bound by these names in every condition.
pub(crate) const BLOCKS: [(&str, &str); 7] = [
    ("job", "job_details"),
    ("contact", "customer_contact"),
    ("risk", "risk_assessment"),
    ("meter", "meter"),
    ("safety", "site_safety"),
    ("exec", "job_execution"),
    ("completion", "job_completion"),
];

/// Strings longer than this (photos) are not handed to rules: they see a placeholder.
pub(crate) const LONG_STRING: usize = 4096;

/// The JSON body as a rhai value, photos (long strings) replaced by a placeholder.
pub(crate) fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => (*b).into(),
        // JSON has one number type: 5.0 is the integer 5 (as JSON Schema's `integer` says), so
        // rules see an integer for it, not a float that an integer check would pass over.
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Dynamic::from(i as INT),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Dynamic::from(f as INT),
            (None, f) => Dynamic::from(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) if s.len() > LONG_STRING => format!("[{} bytes not shown to rules]", s.len()).into(),
        Value::String(s) => s.as_str().into(),
        Value::Array(a) => Dynamic::from_array(a.iter().map(to_dynamic).collect()),
        Value::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o {
                m.insert(k.as_str().into(), to_dynamic(v));
            }
            Dynamic::from_map(m)
        }
    }
}
