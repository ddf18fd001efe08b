//! Step 1 of a decision: the JSON Schema (`schemas/`) of the body.
//!
//! jsonschema reports `required` and `additionalProperties` at the parent object; the contract
//! wants the pointer at the missing or unknown field itself, so each error is turned into one
//! finding per field, with a message that says what is expected (the field's `description`).

use serde_json::Value;

use crate::domain::finding::{escape_token, Finding};

/// Why the body's schema document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Not a valid 2020-12 schema (jsonschema's own error).
    #[error(transparent)]
    Invalid(Box<jsonschema::ValidationError<'static>>),
    /// A list schema without `maxItems` (`at`: its pointer in the document).
    #[error(
        "the list at {at} has no maxItems: every list needs a bound, or a body could make the gateway \
         spend time in proportion to a list as long as the body limit allows"
    )]
    UnboundedList { at: String },
}

/// Why a string is not a photo ([`photo`]); character positions count from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhotoError {
    #[error("'=' at character {at}: padding may only end the string")]
    Padding { at: usize },
    #[error("character {at} is not in the base64 alphabet (A-Z, a-z, 0-9, '+', '/')")]
    Alphabet { at: usize },
    #[error("base64 comes in groups of 4 characters; this has {len}")]
    Groups { len: usize },
    #[error("it decodes to {decoded} bytes, more than 10 MiB ({PHOTO_MAX_BYTES} bytes)")]
    TooLarge { decoded: usize },
}

/// A compiled schema and the raw document (for descriptions in messages).
pub struct Schema {
    validator: jsonschema::Validator,
    document: Value,
    pub version: String,
    /// The most items any list of the schema allows: a body with a longer list is refused before
    /// the validator and the rules run, so the cost of refusing it does not grow with the list.
    longest_list: usize,
}

/// The largest `maxItems` of the document; an error naming a list schema that has none.
fn longest_list(document: &Value) -> Result<usize, SchemaError> {
    let mut longest = 0u64;
    let mut stack = vec![(String::new(), document)];
    while let Some((path, node)) = stack.pop() {
        match node {
            Value::Object(map) => {
                let is_list = map.get("type").is_some_and(|t| t == "array" || t.as_array().is_some_and(|ts| ts.iter().any(|t| t == "array")))
                    || map.contains_key("items")
                    || map.contains_key("prefixItems");
                match map.get("maxItems").and_then(Value::as_u64) {
                    Some(n) => longest = longest.max(n),
                    None if is_list => return Err(SchemaError::UnboundedList { at: if path.is_empty() { "/".to_string() } else { path } }),
                    None => {}
                }
                for (k, v) in map {
                    stack.push((format!("{path}/{}", escape_token(k)), v));
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    stack.push((format!("{path}/{i}"), v));
                }
            }
            _ => {}
        }
    }
    Ok(usize::try_from(longest).unwrap_or(usize::MAX))
}

impl Schema {
    /// Compiles a 2020-12 schema with `format` asserted (off by default in 2020-12).
    pub(crate) fn compile(document: Value) -> Result<Schema, SchemaError> {
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .with_format(PHOTO_FORMAT, |s: &str| photo(s).is_ok())
            .build(&document)
            .map_err(|e| SchemaError::Invalid(Box::new(e)))?;
        let version = document.get("x-version").and_then(Value::as_str).unwrap_or("unversioned").to_string();
        let longest_list = longest_list(&document)?;
        Ok(Schema { validator, document, version, longest_list })
    }

    /// Lists in `body` longer than any list the schema allows (at most `cap` findings), found in
    /// one walk of the body. A body with one is refused on these alone.
    pub(crate) fn oversized_lists(&self, body: &Value, cap: usize) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), body)];
        while let Some((at, node)) = stack.pop() {
            if out.len() >= cap {
                break;
            }
            match node {
                Value::Array(items) if items.len() > self.longest_list => {
                    out.push(Finding::new(
                        at,
                        "maxItems",
                        format!("must have at most {} items (it has {}; no list of the contract is longer)", self.longest_list, items.len()),
                    ));
                }
                Value::Array(items) => stack.extend(items.iter().enumerate().map(|(i, v)| (format!("{at}/{i}"), v))),
                Value::Object(map) => stack.extend(map.iter().map(|(k, v)| (format!("{at}/{}", escape_token(k)), v))),
                _ => {}
            }
        }
        out
    }

    /// The document, as loaded (for the OpenAPI description).
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Every schema finding in `body`, pointers at the field at fault.
    pub fn findings(&self, body: &Value) -> Vec<Finding> {
        self.findings_at_most(body, usize::MAX)
    }

    /// At most `cap` findings. The validator's errors are taken lazily, so a body with a million
    /// wrong items costs what its first `cap` findings cost, not a million messages.
    pub(crate) fn findings_at_most(&self, body: &Value, cap: usize) -> Vec<Finding> {
        let mut out = Vec::new();
        for error in self.validator.iter_errors(body) {
            if out.len() >= cap {
                break;
            }
            let at = error.instance_path().as_str().to_string();
            let keyword = error.kind().keyword().to_string();
            let schema_path = error.schema_path().as_str().to_string();
            use jsonschema::error::ValidationErrorKind as K;
            match error.kind() {
                K::Required { property } => {
                    let name = property.as_str().unwrap_or_default();
                    out.push(Finding::new(
                        format!("{at}/{}", escape_token(name)),
                        keyword,
                        format!("`{name}` is required here{}", self.why_required(&schema_path)),
                    ));
                }
                K::AdditionalProperties { unexpected } | K::UnevaluatedProperties { unexpected } => {
                    for name in unexpected.iter().take(cap.saturating_sub(out.len())) {
                        out.push(Finding::new(
                            format!("{at}/{}", escape_token(name)),
                            keyword.clone(),
                            format!("unknown field `{name}`: not part of the v4 contract (check its spelling)"),
                        ));
                    }
                }
                kind => {
                    let expected = self.description_at(&schema_path);
                    let message = match kind {
                        K::Type { kind } => format!("must be of type {}", type_names(kind)),
                        K::Enum { options } => format!("must be one of {}", one_line(options)),
                        K::Constant { expected_value } => format!("must be {}", one_line(expected_value)),
                        K::Pattern { .. } => format!("{} does not have the expected form", shown(error.instance())),
                        K::Format { format } if format == PHOTO_FORMAT => match error.instance().as_str().map(photo) {
                            Some(Err(why)) => format!("is not a photo: {why}"),
                            _ => format!("{} is not a valid {format}", shown(error.instance())),
                        },
                        K::Format { format } => format!("{} is not a valid {format}", shown(error.instance())),
                        K::MinLength { limit: 1 } => "must not be empty".to_string(),
                        K::MinLength { limit } => format!("must be at least {limit} characters long"),
                        K::MaxLength { limit } => format!("must be at most {limit} characters long"),
                        K::Minimum { limit } => format!("must be at least {limit}"),
                        K::Maximum { limit } => format!("must be at most {limit}"),
                        K::ExclusiveMinimum { limit } => format!("must be more than {limit}"),
                        K::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
                        K::MinItems { limit } => format!("must have at least {limit} items"),
                        K::MaxItems { limit } => format!("must have at most {limit} items"),
                        K::UniqueItems => "must not repeat an item".to_string(),
                        // The schema's only `not` keeps out what a DTC flow file cannot carry.
                        K::Not { .. } => match error.instance().as_str().and_then(crate::dtc::catalogue::unfit_char) {
                            Some(c) => format!("contains {}: {}", crate::dtc::catalogue::describe_char(c), crate::dtc::catalogue::FLOW_TEXT_RULE),
                            None => format!("contains a character a flow file cannot carry: {}", crate::dtc::catalogue::FLOW_TEXT_RULE),
                        },
                        _ => error.masked().to_string(),
                    };
                    let message = match expected {
                        Some(d) => format!("{message} (expected: {d})"),
                        None => message,
                    };
                    out.push(Finding::new(at, keyword, message));
                }
            }
        }
        out
    }

    /// The `description` of the property whose keyword failed, from the schema path.
    fn description_at(&self, schema_path: &str) -> Option<String> {
        let parent = schema_path.rsplit_once('/')?.0;
        self.document.pointer(parent)?.get("description")?.as_str().map(str::to_string)
    }

    /// For a conditional `required` (inside `then`): the `description` of that `if`/`then` pair.
    fn why_required(&self, schema_path: &str) -> String {
        let Some((parent, _)) = schema_path.rsplit_once("/then/") else { return String::new() };
        match self.document.pointer(&format!("{parent}/then")).and_then(|t| t.get("description")).and_then(Value::as_str) {
            Some(d) => format!(" ({d})"),
            None => " (a condition of its block applies)".to_string(),
        }
    }
}

fn type_names(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => t.to_string(),
        jsonschema::error::TypeKind::Multiple(ts) => {
            let names: Vec<String> = (*ts).into_iter().map(|t| t.to_string()).collect();
            names.join(" or ")
        }
    }
}

fn one_line(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}…", &s[..s.floor_char_boundary(300)])
    } else {
        s
    }
}

/// The `format` of a photo: base64, standard alphabet, padded, at most [`PHOTO_MAX_BYTES`] decoded.
pub(crate) const PHOTO_FORMAT: &str = "photo-base64";

/// The most bytes a photo may decode to.
pub(crate) const PHOTO_MAX_BYTES: usize = 10 * 1024 * 1024;

/// Checks a photo in one pass over its bytes, without a regular expression and without decoding
/// it: the alphabet, the padding, and the decoded size from the length. The size of what it
/// decodes to, or why it is not a photo.
pub fn photo(s: &str) -> Result<usize, PhotoError> {
    let b = s.as_bytes();
    let pad = b.iter().rev().take(2).take_while(|&&c| c == b'=').count();
    let body = &b[..b.len() - pad];
    // Branch-free per byte, so the compiler can check many bytes at once; where a bad one is,
    // is only looked for once one is known to be there.
    let fits = |c: u8| c.is_ascii_alphanumeric() | (c == b'+') | (c == b'/');
    if !body.iter().fold(true, |ok, &c| ok & fits(c)) {
        let (at, c) = body.iter().enumerate().find(|(_, &c)| !fits(c)).map_or((0, 0), |(i, &c)| (i, c));
        return Err(if c == b'=' { PhotoError::Padding { at } } else { PhotoError::Alphabet { at } });
    }
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return Err(PhotoError::Groups { len: b.len() });
    }
    let decoded = b.len() / 4 * 3 - pad;
    if decoded > PHOTO_MAX_BYTES {
        return Err(PhotoError::TooLarge { decoded });
    }
    Ok(decoded)
}

/// A value as shown in a message: short strings quoted, long ones (photos) by length only.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 60 => format!("a string of {} characters", s.chars().count()),
        other => one_line(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn photos_are_checked_in_one_pass() {
        assert_eq!(photo("QUJD"), Ok(3));
        assert_eq!(photo("QUI="), Ok(2));
        assert_eq!(photo("QQ=="), Ok(1));
        assert_eq!(photo("ab+/09AZ"), Ok(6));
        for (bad, why) in [
            ("", "groups of 4"),
            ("QUJ", "groups of 4"),
            ("Q===", "'=' at character 1"),
            ("QU=D", "'=' at character 2"),
            ("QUJD\n", "character 4 is not in the base64 alphabet"),
            ("QUJ\u{e9}", "character 3 is not"),
            ("QUJ-QUJD", "character 3 is not in the base64 alphabet"),
            ("QUJDQ", "groups of 4"),
        ] {
            let e = photo(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // Exactly 10 MiB decoded, and two bytes more.
        assert_eq!(photo(&format!("{}==", "A".repeat(13_981_014))), Ok(PHOTO_MAX_BYTES));
        assert_eq!(photo(&"A".repeat(13_981_016)).unwrap_err().to_string(), "it decodes to 10485762 bytes, more than 10 MiB (10485760 bytes)");
    }

    #[test]
    fn every_list_needs_a_bound_and_a_longer_one_is_one_finding() {
        let unbounded = json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}});
        let e = Schema::compile(unbounded).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            e,
            "the list at /properties/a has no maxItems: every list needs a bound, or a body could make the gateway \
             spend time in proportion to a list as long as the body limit allows"
        );
        let bounded = json!({"type": "object", "properties": {"a": {"type": "array", "maxItems": 3, "items": {"enum": ["x"]}}}});
        let schema = Schema::compile(bounded).unwrap();
        let body = json!({"a": (0..1_000_000).collect::<Vec<u32>>(), "b": {"c": [1, 2, 3, 4]}});
        let mut found: Vec<String> = schema.oversized_lists(&body, 100).into_iter().map(|f| f.pointer).collect();
        found.sort();
        assert_eq!(found, ["/a", "/b/c"]);
        assert!(schema.oversized_lists(&json!({"a": ["x", "x", "x"]}), 100).is_empty());
    }
}
