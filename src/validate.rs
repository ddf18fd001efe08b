//! Step 1 of a decision: the JSON Schema (`schemas/`) of the body.
//!
//! jsonschema reports `required` and `additionalProperties` at the parent object; the contract
//! wants the pointer at the missing or unknown field itself, so each error is turned into one
//! finding per field, with a message that says what is expected (the field's `description`).

use serde_json::Value;

use crate::finding::{escape_token, Finding};

/// A compiled schema and the raw document (for descriptions in messages).
pub struct Schema {
    validator: jsonschema::Validator,
    document: Value,
    pub version: String,
}

impl Schema {
    /// Compiles a 2020-12 schema with `format` asserted (off by default in 2020-12).
    pub fn compile(document: Value) -> Result<Schema, String> {
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&document)
            .map_err(|e| e.to_string())?;
        let version = document.get("x-version").and_then(Value::as_str).unwrap_or("unversioned").to_string();
        Ok(Schema { validator, document, version })
    }

    /// The document, as loaded (for the OpenAPI description).
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Every schema finding in `body`, pointers at the field at fault.
    pub fn findings(&self, body: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        for error in self.validator.iter_errors(body) {
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
                    for name in unexpected {
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
                        K::Not { .. } => "contains a character a flow file cannot carry (a control character or the '|' separator)".to_string(),
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
    if s.len() > 300 { format!("{}…", &s[..s.floor_char_boundary(300)]) } else { s }
}

/// A value as shown in a message: short strings quoted, long ones (photos) by length only.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 60 => format!("a string of {} characters", s.chars().count()),
        other => one_line(other),
    }
}
