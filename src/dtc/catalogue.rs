//! The DTC catalogue extract (`flow-templates/catalogue/`): every flow's groups, their nesting
//! and fields, each data item's logical format and valid set; and what text a flow file may carry.
//! The writer checks every value against it, the reader every field it reads.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why the catalogue extract could not be read: the file or folder, and the cause.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {item}: {format:?} is not a DTC format")]
    Fallback { path: PathBuf, item: String, format: String },
}

/// Formats for items the extract leaves blank, in the catalogue folder (ours, not the extract's).
pub(crate) const FALLBACK_FORMATS: &str = "fallback-formats.json";

/// Why a value is not written in its DTC format (the writer's check, and the reader's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("longer than {max} characters")]
    TooLong { max: usize },
    #[error("not NUM({digits},{decimals})")]
    NotDecimal { digits: usize, decimals: usize },
    #[error("not NUM({digits})")]
    NotInteger { digits: usize },
    #[error("not a ccyymmdd date")]
    NotDate,
    /// A real date, outside the years DTC dates may be in.
    #[error("not a date in 1950-2199")]
    DateOutOfRange,
    #[error("not a ccyymmddhhmmss date-time")]
    NotDateTime,
    /// A real date, with no real time of day.
    #[error("not a ccyymmddhhmmss date-time (time of day)")]
    NotTimeOfDay,
    #[error("not T or F")]
    NotBoolean,
}

/// Why the writer refuses a value for its catalogue item ([`check_value`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{item} ({name}) is required but empty")]
    Required { item: String, name: String },
    #[error("{item} ({name}) would contain {}: {FLOW_TEXT_RULE}", describe_char(*.unfit))]
    Unfit { item: String, name: String, unfit: char },
    #[error("{item} ({name}) {value:?}: {source}")]
    Format { item: String, name: String, value: String, source: FormatError },
    #[error("{item} ({name}) {value:?} is not in its valid set")]
    NotInValidSet { item: String, name: String, value: String },
}

/// A DTC logical format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Char(usize),
    Num { digits: usize, decimals: usize },
    Date,
    DateTime,
    Boolean,
}

impl Format {
    /// Parses `CHAR(10)`, `NUM(9 ,1)`, `DATE(8)`, `BOOLEAN(1)`...
    pub fn parse(s: &str) -> Option<Format> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let (kind, args) = match s.split_once('(') {
            Some((k, rest)) => (k.to_string(), rest.trim_end_matches(')').to_string()),
            None => (s.clone(), String::new()),
        };
        let mut nums = args.split(',').filter_map(|n| n.parse::<usize>().ok());
        match kind.as_str() {
            "CHAR" => Some(Format::Char(nums.next()?)),
            "NUM" | "INT" => {
                let digits = nums.next()?;
                Some(Format::Num { digits, decimals: nums.next().unwrap_or(0) })
            }
            "DATE" => Some(Format::Date),
            "DATETIME" => Some(Format::DateTime),
            "BOOLEAN" => Some(Format::Boolean),
            _ => None,
        }
    }

    /// Whether `v` (non-empty) is written in this format; the reason if not.
    pub fn check(&self, v: &str) -> Result<(), FormatError> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match *self {
            Format::Char(n) if v.chars().count() > n => Err(FormatError::TooLong { max: n }),
            Format::Char(_) => Ok(()),
            Format::Num { digits: n, decimals: 0 } if digits(v) && v.len() <= n => Ok(()),
            Format::Num { digits: n, decimals: d } if d > 0 => {
                let (int, frac) = v.split_once('.').unwrap_or((v, ""));
                let frac_ok = frac.is_empty() && !v.contains('.') || digits(frac) && frac.len() <= d;
                if digits(int) && int.len() <= n.saturating_sub(d) && frac_ok {
                    Ok(())
                } else {
                    Err(FormatError::NotDecimal { digits: n, decimals: d })
                }
            }
            Format::Num { digits: n, .. } => Err(FormatError::NotInteger { digits: n }),
            Format::Date if v.len() == 8 && v.is_ascii() && crate::domain::clock::parse_date(&format!("{}-{}-{}", &v[..4], &v[4..6], &v[6..])).is_some() => {
                Ok(())
            }
            Format::Date => Err(FormatError::NotDate),
            Format::DateTime if v.len() == 14 && digits(v) && Format::Date.check(&v[..8]).is_ok() => Ok(()),
            Format::DateTime => Err(FormatError::NotDateTime),
            Format::Boolean if v == "T" || v == "F" => Ok(()),
            Format::Boolean => Err(FormatError::NotBoolean),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CatField {
    pub item: String,
    pub name: String,
    pub format: Option<Format>,
    pub required: bool,
    /// The valid set of the item, when it is an enumeration.
    pub valid: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct CatGroup {
    pub code: String,
    pub name: String,
    pub parent: Option<String>,
    pub level: usize,
    pub min: u64,
    pub max: Option<u64>,
    pub fields: Vec<CatField>,
}

#[derive(Debug, Clone)]
pub struct CatFlow {
    pub id: String,
    pub version: String,
    pub name: String,
    pub groups: BTreeMap<String, CatGroup>,
}

/// The catalogue extract: flows by id (`D0139`), each with its groups and fields.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub flows: HashMap<String, CatFlow>,
}

impl Catalogue {
    pub fn load(dir: &Path) -> Result<Catalogue, CatalogueError> {
        let read = |p: &Path| -> Result<Value, CatalogueError> {
            let text = std::fs::read_to_string(p).map_err(|source| CatalogueError::Read { path: p.to_path_buf(), source })?;
            serde_json::from_str(&text).map_err(|source| CatalogueError::Json { path: p.to_path_buf(), source })
        };
        let items = read(&dir.join("data-items.json"))?;
        // Formats the extract leaves blank, from the DTC reference: data beside the extract.
        let fallback_path = dir.join(FALLBACK_FORMATS);
        let mut fallback = HashMap::new();
        if fallback_path.exists() {
            let doc = read(&fallback_path)?;
            for (item, text) in doc.get("formats").and_then(Value::as_object).into_iter().flatten() {
                let text = text.as_str().unwrap_or_default();
                let format = Format::parse(text).ok_or_else(|| CatalogueError::Fallback {
                    path: fallback_path.clone(),
                    item: item.clone(),
                    format: text.to_string(),
                })?;
                fallback.insert(item.clone(), format);
            }
        }
        let mut flows = HashMap::new();
        let flows_dir = dir.join("flows");
        let mut entries: Vec<_> = std::fs::read_dir(&flows_dir)
            .map_err(|source| CatalogueError::Read { path: flows_dir.clone(), source })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        entries.sort();
        for path in entries {
            let f = read(&path)?;
            let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let mut groups = BTreeMap::new();
            for (code, g) in f.get("groups").and_then(Value::as_object).into_iter().flatten() {
                let card = g.get("cardinality");
                let fields = g
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|fd| {
                        let item = s(fd, "ref");
                        let def = items.get(&item);
                        let logical = def.and_then(|d| d.get("logicalFormat")).and_then(Value::as_str).unwrap_or_default();
                        let format = Format::parse(logical)
                            .filter(|_| !logical.trim().starts_with('('))
                            .or_else(|| fallback.get(&item).copied())
                            .or_else(|| Format::parse(&s(fd, "format")));
                        let valid = def
                            .and_then(|d| d.get("validSet"))
                            .filter(|v| v.get("kind").and_then(Value::as_str) == Some("enum"))
                            .map(|v| v.get("values").and_then(Value::as_array).into_iter().flatten().map(|x| s(x, "code")).collect());
                        CatField { name: s(fd, "name"), format, required: fd.get("required").and_then(Value::as_bool).unwrap_or(false), valid, item }
                    })
                    .collect();
                groups.insert(
                    code.clone(),
                    CatGroup {
                        code: code.clone(),
                        name: s(g, "name"),
                        parent: g.get("parent").and_then(Value::as_str).map(str::to_string),
                        level: g.get("level").and_then(Value::as_u64).unwrap_or(1) as usize,
                        min: card.and_then(|c| c.get("min")).and_then(Value::as_u64).unwrap_or(0),
                        max: card.and_then(|c| c.get("max")).and_then(Value::as_u64),
                        fields,
                    },
                );
            }
            let flow = CatFlow { id: s(&f, "flowId"), version: s(&f, "flowVersion"), name: s(&f, "flowName"), groups };
            flows.insert(flow.id.clone(), flow);
        }
        Ok(Catalogue { flows })
    }
}

/// What a flow file may carry: letters, marks, digits, punctuation, symbols and the plain space.
/// Not the `|` separator; not control or format characters (a right-to-left override, a
/// zero-width space), line or paragraph separators (line-based readers see a new record), other
/// spaces, private-use or unassigned code points. The schema's `not` pattern on every text field
/// says the same; this is the writer's last line of defence.
pub(crate) const FLOW_TEXT_RULE: &str = "a flow file carries letters, marks, digits, punctuation, symbols and the plain space only: \
     not '|', control or format characters, line or paragraph separators, other spaces, private-use or unassigned code points";

static UNFIT: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| regex::Regex::new(r"[\p{C}\p{Z}|&&[^ ]]").ok());

/// The first character of `s` a flow file may not carry, if any.
pub(crate) fn unfit_char(s: &str) -> Option<char> {
    match UNFIT.as_ref() {
        Some(re) => re.find(s).and_then(|m| m.as_str().chars().next()),
        // The pattern is a constant that compiles; should it not, refuse anything outside ASCII print.
        None => s.chars().find(|c| !(' '..='~').contains(c) || *c == '|'),
    }
}

static FORMAT_CHAR: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| regex::Regex::new(r"\p{Cf}").ok());

/// A character a flow file may not carry, as named in a message: its code point and its kind.
pub(crate) fn describe_char(c: char) -> String {
    let kind = match c {
        '|' => return "'|' (the DTC field separator)".to_string(),
        '\u{2028}' => "a line separator",
        '\u{2029}' => "a paragraph separator",
        c if c.is_control() => "a control character",
        c if c.is_whitespace() => "a space other than the plain space",
        '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{FFFFD}' | '\u{100000}'..='\u{10FFFD}' => "a private-use character",
        c if FORMAT_CHAR.as_ref().is_some_and(|re| re.is_match(c.encode_utf8(&mut [0; 4]))) => "a format character",
        _ => "an unassigned code point",
    };
    format!("U+{:04X} ({kind})", u32::from(c))
}

/// A value against its catalogue item: only characters a flow file carries, format, valid set.
pub(crate) fn check_value(cat: &CatField, v: &str) -> Result<(), ValueError> {
    let (item, name) = (|| cat.item.clone(), || cat.name.clone());
    if v.is_empty() {
        return if cat.required { Err(ValueError::Required { item: item(), name: name() }) } else { Ok(()) };
    }
    if let Some(unfit) = unfit_char(v) {
        return Err(ValueError::Unfit { item: item(), name: name(), unfit });
    }
    if let Some(f) = cat.format {
        f.check(v).map_err(|source| ValueError::Format { item: item(), name: name(), value: v.to_string(), source })?;
    }
    if let Some(valid) = &cat.valid {
        if !valid.iter().any(|c| c == v) {
            return Err(ValueError::NotInValidSet { item: item(), name: name(), value: v.to_string() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_check() {
        assert_eq!(Format::parse("NUM(9 ,1)"), Some(Format::Num { digits: 9, decimals: 1 }));
        assert!(Format::Num { digits: 9, decimals: 1 }.check("28933.0").is_ok());
        assert!(Format::Num { digits: 9, decimals: 1 }.check("123456789.0").is_err());
        assert!(Format::Date.check("20250108").is_ok());
        assert!(Format::Date.check("20250230").is_err());
        assert!(Format::Char(4).check("TESTS").is_err());
        // Non-ASCII and odd formats are findings, never a panic.
        assert!(Format::Date.check("2025£01").is_err());
        assert!(Format::DateTime.check("2025010£1200").is_err());
        assert!(Format::Num { digits: 1, decimals: 3 }.check("1.5").is_err());
    }

    #[test]
    fn a_flow_file_carries_printable_text_and_the_plain_space_only() {
        for fit in ["Flat 1, 25 Spear Building", "Łukasz Żółć", "Café £5 & co. (rear) — “ok”", "日本", "e\u{301}"] {
            assert_eq!(unfit_char(fit), None, "{fit:?}");
        }
        for (unfit, c) in [
            ("a\u{2028}b", '\u{2028}'),
            ("a\u{2029}b", '\u{2029}'),
            ("abc\u{202E}cba", '\u{202E}'),
            ("\u{200B}", '\u{200B}'),
            ("no\u{a0}break", '\u{a0}'),
            ("tab\there", '\t'),
            ("c1\u{85}", '\u{85}'),
            ("bom\u{feff}", '\u{feff}'),
            ("private\u{e000}", '\u{e000}'),
            ("unassigned\u{378}", '\u{378}'),
            ("a|b", '|'),
        ] {
            assert_eq!(unfit_char(unfit), Some(c), "{unfit:?}");
        }
        assert_eq!(describe_char('\u{202E}'), "U+202E (a format character)");
        assert_eq!(describe_char('\u{2028}'), "U+2028 (a line separator)");
        assert_eq!(describe_char('\u{0}'), "U+0000 (a control character)");
        assert_eq!(describe_char('\u{a0}'), "U+00A0 (a space other than the plain space)");
        assert_eq!(describe_char('\u{378}'), "U+0378 (an unassigned code point)");
        // The writer refuses them too, whatever the schema let through.
        let cat = CatField { item: "J0012".into(), name: "Additional Information".into(), format: None, required: false, valid: None };
        assert!(check_value(&cat, "fitted, tested").is_ok());
        let e = check_value(&cat, "fitted\u{2028}tested").unwrap_err().to_string();
        assert_eq!(e, format!("J0012 (Additional Information) would contain U+2028 (a line separator): {FLOW_TEXT_RULE}"));
        let date = CatField { item: "J0016".into(), name: "Date of Action".into(), format: Some(Format::Date), required: true, valid: None };
        assert_eq!(check_value(&date, "").unwrap_err().to_string(), "J0016 (Date of Action) is required but empty");
        assert_eq!(check_value(&date, "20250230").unwrap_err().to_string(), "J0016 (Date of Action) \"20250230\": not a ccyymmdd date");
    }
}
