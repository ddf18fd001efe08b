//! Flow definitions (`flow-templates/`) and the one DTC writer.
//!
//! A template says, for one flow, which groups to write in which order and nesting, when a
//! group is written, what it repeats over (one 263 per rate, one 257 per DNO code), and where
//! each field's value comes from (a rhai expression over the request) with its formatting.
//! Every template is checked against the catalogue extract in `flow-templates/catalogue/` when a
//! rule set loads (group codes, nesting, field order and count), and every value against its
//! data item's format when it is written. A new flow is a new file, not new Rust.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rhai::{Dynamic, Scope};
use serde::Deserialize;
use serde_json::Value;

use crate::rules::engine::{Condition, RuleFailure, Rules};

// ---------------------------------------------------------------------------------------------
// The catalogue

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
    pub fn check(&self, v: &str) -> Result<(), String> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match *self {
            Format::Char(n) if v.chars().count() > n => Err(format!("longer than {n} characters")),
            Format::Char(_) => Ok(()),
            Format::Num { digits: n, decimals: 0 } if digits(v) && v.len() <= n => Ok(()),
            Format::Num { digits: n, decimals: d } if d > 0 => {
                let (int, frac) = v.split_once('.').unwrap_or((v, ""));
                let frac_ok = frac.is_empty() && !v.contains('.') || digits(frac) && frac.len() <= d;
                if digits(int) && int.len() <= n.saturating_sub(d) && frac_ok { Ok(()) } else { Err(format!("not NUM({n},{d})")) }
            }
            Format::Num { digits: n, .. } => Err(format!("not NUM({n})")),
            Format::Date if v.len() == 8 && v.is_ascii() && crate::domain::clock::parse_date(&format!("{}-{}-{}", &v[..4], &v[4..6], &v[6..])).is_some() => Ok(()),
            Format::Date => Err("not a ccyymmdd date".into()),
            Format::DateTime if v.len() == 14 && digits(v) && Format::Date.check(&v[..8]).is_ok() => Ok(()),
            Format::DateTime => Err("not a ccyymmddhhmmss date-time".into()),
            Format::Boolean if v == "T" || v == "F" => Ok(()),
            Format::Boolean => Err("not T or F".into()),
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

/// Items whose catalogue format is blank: lengths from the DTC reference.
fn fallback_format(item: &str) -> Option<&'static str> {
    match item {
        "J0263" => Some("CHAR(10)"),
        "J0084" => Some("CHAR(4)"),
        i if ("J1036"..="J1044").contains(&i) && i.len() == 5 => Some("CHAR(40)"),
        _ => None,
    }
}

impl Catalogue {
    pub fn load(dir: &Path) -> Result<Catalogue, String> {
        let read = |p: &Path| -> Result<Value, String> {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
        };
        let items = read(&dir.join("data-items.json"))?;
        let mut flows = HashMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir.join("flows"))
            .map_err(|e| format!("{}: {e}", dir.join("flows").display()))?
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
                            .or_else(|| fallback_format(&item).and_then(Format::parse))
                            .or_else(|| Format::parse(&s(fd, "format")));
                        let valid = def.and_then(|d| d.get("validSet")).filter(|v| v.get("kind").and_then(Value::as_str) == Some("enum")).map(|v| {
                            v.get("values").and_then(Value::as_array).into_iter().flatten().map(|x| s(x, "code")).collect()
                        });
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

// ---------------------------------------------------------------------------------------------
// Templates

/// How a field's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FieldFormat {
    /// As given.
    #[default]
    Text,
    /// `YYYY-MM-DD` or an RFC 3339 instant, written `ccyymmdd` (Europe/London).
    Date,
    /// An RFC 3339 instant, written `ccyymmddhhmmss` (Europe/London).
    Datetime,
    /// true/false written `T`/`F`.
    Bool,
    /// A register reading written with one decimal (`28933.0`).
    Reading,
    /// A postcode, upper case with one space.
    Postcode,
    Upper,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDef {
    pub flow: String,
    pub version: String,
    pub name: String,
    #[serde(default)]
    pub note: Option<String>,
    pub groups: Vec<GroupDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDef {
    pub code: String,
    /// Written only when this is true.
    #[serde(default)]
    pub when: Option<String>,
    /// An array: the group is written once per element, bound to `each`.
    #[serde(default)]
    pub repeat: Option<String>,
    pub fields: Vec<FieldDef>,
    #[serde(default)]
    pub groups: Vec<GroupDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    pub item: String,
    /// A rhai expression; absent means the field is left empty.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub format: FieldFormat,
}

struct Field {
    cat: CatField,
    /// `()` for a field the template leaves empty.
    value: Condition,
    format: FieldFormat,
}

struct Group {
    /// Its index in [`Template::groups`], in the order the template lists groups.
    id: usize,
    code: String,
    when: Option<Condition>,
    repeat: Option<Condition>,
    fields: Vec<Field>,
    /// The field values of one record, evaluated together.
    values: crate::rules::engine::Batch,
    groups: Vec<Group>,
}

/// A compiled, checked flow template.
pub struct Template {
    pub flow: String,
    pub version: String,
    pub name: String,
    /// Every group of the template, in the order it lists them (nested ones after their parent).
    pub groups: Vec<GroupInfo>,
    tree: Vec<Group>,
    top_codes: Vec<String>,
}

/// A template group as the reload gate's coverage names it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// The group code with its parents', `262/263`.
    pub path: String,
    /// Written only when its `when` holds or its `repeat` gives elements: a choice a sample
    /// must make for the group to be seen.
    pub optional: bool,
}

impl Template {
    /// Compiles a template with the rule set's engine and checks it against the catalogue.
    pub fn compile(file: &str, def: TemplateDef, rules: &Rules, catalogue: &Catalogue) -> Result<Template, String> {
        let cat = catalogue.flows.get(&def.flow).ok_or_else(|| format!("{file}: flow {} is not in the catalogue", def.flow))?;
        if cat.version != def.version {
            return Err(format!("{file}: {} is version {} in the catalogue, not {}", def.flow, cat.version, def.version));
        }
        let mut groups = Vec::new();
        let tree = compile_groups(file, &def.groups, None, cat, rules, &mut groups)?;
        let top_codes = tree.iter().map(|g| g.code.clone()).collect();
        Ok(Template { flow: def.flow, version: def.version, name: def.name, groups, tree, top_codes })
    }

    /// Writes the group records for one request (each record is its fields, code first), and
    /// counts the top-level ones. `written`, when given, gets the index of every group written.
    pub fn render(&self, rules: &Rules, scope: &mut Scope<'static>, mut written: Option<&mut Vec<usize>>) -> Result<(Vec<Vec<String>>, usize), RuleFailure> {
        let mut out = Vec::new();
        render_groups(&self.flow, &self.tree, rules, scope, &mut out, &mut written)?;
        let top = out.iter().filter(|r| r.first().is_some_and(|c| self.top_codes.contains(c))).count();
        Ok((out, top))
    }
}

/// `parent` is the enclosing group's code and path; `infos` gets every group in order.
fn compile_groups(file: &str, defs: &[GroupDef], parent: Option<(&str, &str)>, cat: &CatFlow, rules: &Rules, infos: &mut Vec<GroupInfo>) -> Result<Vec<Group>, String> {
    let (parent, parent_path) = (parent.map(|p| p.0), parent.map(|p| p.1));
    let mut out = Vec::new();
    for g in defs {
        let id = infos.len();
        let path = parent_path.map_or_else(|| g.code.clone(), |p| format!("{p}/{}", g.code));
        infos.push(GroupInfo { path: path.clone(), optional: g.when.is_some() || g.repeat.is_some() });
        let cg = cat.groups.get(&g.code).ok_or_else(|| format!("{file}: group {} is not part of {}", g.code, cat.id))?;
        if cg.parent.as_deref() != parent {
            return Err(format!("{file}: group {} must sit under {}, not {}", g.code, cg.parent.as_deref().unwrap_or("the top"), parent.unwrap_or("the top")));
        }
        if g.fields.len() != cg.fields.len() {
            return Err(format!("{file}: group {} has {} fields, the catalogue has {}", g.code, g.fields.len(), cg.fields.len()));
        }
        let compile = |what: String, src: &str| -> Result<Condition, String> {
            rules.compile_condition(&what, src)
        };
        let mut fields = Vec::new();
        for (f, cf) in g.fields.iter().zip(&cg.fields) {
            if f.item != cf.item {
                return Err(format!("{file}: group {} field {} is {} in the catalogue, the template has {}", g.code, fields.len() + 1, cf.item, f.item));
            }
            if cf.required && f.value.is_none() {
                return Err(format!("{file}: group {} item {} ({}) is required but has no value", g.code, cf.item, cf.name));
            }
            let value = compile(format!("{file}: {} {}", g.code, f.item), f.value.as_deref().unwrap_or("()"))?;
            fields.push(Field { cat: cf.clone(), value, format: f.format });
        }
        let values = rules.batch(fields.iter().map(|f: &Field| &f.value));
        out.push(Group {
            id,
            values,
            code: g.code.clone(),
            when: g.when.as_deref().map(|w| compile(format!("{file}: {} when", g.code), w)).transpose()?,
            repeat: g.repeat.as_deref().map(|w| compile(format!("{file}: {} repeat", g.code), w)).transpose()?,
            fields,
            groups: compile_groups(file, &g.groups, Some((&g.code, &path)), cat, rules, infos)?,
        });
    }
    // Every mandatory child group of this level must be written by the template.
    for cg in cat.groups.values().filter(|cg| cg.parent.as_deref() == parent && cg.min > 0) {
        if !defs.iter().any(|g| g.code == cg.code) {
            return Err(format!("{file}: group {} is mandatory under {} but the template leaves it out", cg.code, parent.unwrap_or("the top")));
        }
    }
    Ok(out)
}

fn render_groups(flow: &str, groups: &[Group], rules: &Rules, scope: &mut Scope<'static>, out: &mut Vec<Vec<String>>, written: &mut Option<&mut Vec<usize>>) -> Result<(), RuleFailure> {
    for g in groups {
        let fail = |what: &str, message: String| RuleFailure { rule: format!("{flow}/{}{what}", g.code), message };
        if let Some(w) = &g.when {
            if !rules.truth(scope, w).map_err(|m| fail(" when", m))? {
                continue;
            }
        }
        let elements = match &g.repeat {
            Some(r) => {
                let v = rules.run(scope, r).map_err(|m| fail(" repeat", m))?;
                if v.is_unit() {
                    vec![]
                } else {
                    v.into_array().map_err(|t| fail(" repeat", format!("gave a {t}, not an array")))?
                }
            }
            None => vec![Dynamic::UNIT],
        };
        for each in elements {
            let mark = scope.len();
            if g.repeat.is_some() {
                scope.push_constant_dynamic("each", each);
            }
            let mut record = vec![g.code.clone()];
            let conditions: Vec<&Condition> = g.fields.iter().map(|f| &f.value).collect();
            let values = rules.run_batch(scope, &g.values, &conditions);
            for (f, value) in g.fields.iter().zip(values) {
                let raw = value.map_err(|m| fail(&format!(" {}", f.cat.item), m))?;
                let text = write_value(raw, f.format).map_err(|m| fail(&format!(" {}", f.cat.item), m))?;
                check_value(&f.cat, &text).map_err(|m| fail(&format!(" {}", f.cat.item), m))?;
                record.push(text);
            }
            out.push(record);
            if let Some(w) = written.as_deref_mut() {
                w.push(g.id);
            }
            let r = render_groups(flow, &g.groups, rules, scope, out, written);
            scope.rewind(mark);
            r?;
        }
    }
    Ok(())
}

/// Formats one value for a flow file.
fn write_value(v: Dynamic, format: FieldFormat) -> Result<String, String> {
    if v.is_unit() {
        return Ok(String::new());
    }
    let text = || -> Result<String, String> {
        if v.is_string() {
            return Ok(v.clone().into_string().unwrap_or_default());
        }
        if let Ok(i) = v.as_int() {
            return Ok(i.to_string());
        }
        Err(format!("gave a {}, expected text", v.type_name()))
    };
    Ok(match format {
        FieldFormat::Text => text()?,
        FieldFormat::Upper => text()?.to_uppercase(),
        FieldFormat::Postcode => crate::rules::engine::postcode(&text()?),
        FieldFormat::Bool => match v.as_bool() {
            Ok(true) => "T".into(),
            Ok(false) => "F".into(),
            Err(t) => return Err(format!("gave a {t}, expected true or false")),
        },
        FieldFormat::Date => {
            let s = text()?;
            if let Some(d) = crate::domain::clock::parse_date(&s) {
                crate::domain::clock::dtc_date(d)
            } else if let Some(t) = crate::domain::clock::parse_rfc3339(&s) {
                crate::domain::clock::dtc_date(crate::domain::clock::london(t).date())
            } else {
                return Err(format!("{s:?} is not a date"));
            }
        }
        FieldFormat::Datetime => {
            let s = text()?;
            let t = crate::domain::clock::parse_rfc3339(&s).ok_or_else(|| format!("{s:?} is not a date-time"))?;
            crate::domain::clock::dtc_datetime(crate::domain::clock::london(t))
        }
        FieldFormat::Reading => {
            let s = text()?;
            let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
            let n: u64 = int.parse().map_err(|_| format!("{s:?} is not a reading"))?;
            let frac = frac.chars().next().unwrap_or('0');
            if !frac.is_ascii_digit() {
                return Err(format!("{s:?} is not a reading"));
            }
            format!("{n}.{frac}")
        }
    })
}

/// What a flow file may carry: letters, marks, digits, punctuation, symbols and the plain space.
/// Not the `|` separator; not control or format characters (a right-to-left override, a
/// zero-width space), line or paragraph separators (line-based readers see a new record), other
/// spaces, private-use or unassigned code points. The schema's `not` pattern on every text field
/// says the same; this is the writer's last line of defence.
pub const FLOW_TEXT_RULE: &str = "a flow file carries letters, marks, digits, punctuation, symbols and the plain space only: \
     not '|', control or format characters, line or paragraph separators, other spaces, private-use or unassigned code points";

static UNFIT: std::sync::LazyLock<Option<regex::Regex>> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"[\p{C}\p{Z}|&&[^ ]]").ok());

/// The first character of `s` a flow file may not carry, if any.
pub fn unfit_char(s: &str) -> Option<char> {
    match UNFIT.as_ref() {
        Some(re) => re.find(s).and_then(|m| m.as_str().chars().next()),
        // The pattern is a constant that compiles; should it not, refuse anything outside ASCII print.
        None => s.chars().find(|c| !(' '..='~').contains(c) || *c == '|'),
    }
}

static FORMAT_CHAR: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| regex::Regex::new(r"\p{Cf}").ok());

/// A character a flow file may not carry, as named in a message: its code point and its kind.
pub fn describe_char(c: char) -> String {
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
fn check_value(cat: &CatField, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return if cat.required { Err(format!("{} ({}) is required but empty", cat.item, cat.name)) } else { Ok(()) };
    }
    if let Some(c) = unfit_char(v) {
        return Err(format!("{} ({}) would contain {}: {FLOW_TEXT_RULE}", cat.item, cat.name, describe_char(c)));
    }
    if let Some(f) = cat.format {
        f.check(v).map_err(|m| format!("{} ({}) {v:?}: {m}", cat.item, cat.name))?;
    }
    if let Some(valid) = &cat.valid {
        if !valid.iter().any(|c| c == v) {
            return Err(format!("{} ({}) {v:?} is not in its valid set", cat.item, cat.name));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Files

/// A flow for one recipient, its group records written, waiting for a file id and a time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowBody {
    pub flow: String,
    pub version: String,
    pub from_role: String,
    pub from_mpid: String,
    pub to_role: String,
    pub to_mpid: String,
    pub records: Vec<Vec<String>>,
    /// How many records are top-level groups (the ZPT flow count).
    pub top_level: usize,
}

/// Header values the sources leave open: configuration.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub test_flag: String,
    pub crlf: bool,
    pub object_name: String,
}

/// Appends one record: each field followed by `|`, then the line ending.
pub fn push_record(out: &mut String, fields: &[&str], eol: &str) {
    for f in fields {
        out.push_str(f);
        out.push('|');
    }
    out.push_str(eol);
}

impl FlowBody {
    /// `<to role><to MPID>` as the answer shows it: `X/TEST`.
    pub fn to_label(&self) -> String {
        format!("{}/{}", self.to_role, self.to_mpid)
    }

    /// The whole file: ZHV, the group records, ZPT.
    pub fn finish(&self, file_id: &str, created: time::OffsetDateTime, env: &Envelope) -> String {
        let eol = if env.crlf { "\r\n" } else { "\n" };
        let ts = crate::domain::clock::dtc_datetime(crate::domain::clock::london(created));
        let mut out = String::new();
        let mut line = |fields: &[&str]| push_record(&mut out, fields, eol);
        let flow_version = format!("{}{}", self.flow, self.version);
        line(&["ZHV", file_id, &flow_version, &self.from_role, &self.from_mpid, &self.to_role, &self.to_mpid, &ts, "", "", "", &env.test_flag]);
        for r in &self.records {
            let fields: Vec<&str> = r.iter().map(String::as_str).collect();
            line(&fields);
        }
        let count = (self.records.len() as u64 % 10_000_000_000).to_string();
        let top = self.top_level.to_string();
        line(&["ZPT", file_id, &count, "", &top, &ts]);
        out
    }

    /// The object name under which the file is delivered.
    pub fn object_name(&self, file_id: &str, env: &Envelope) -> String {
        env.object_name
            .replace("{to_role}", &self.to_role)
            .replace("{to_mpid}", &self.to_mpid)
            .replace("{flow}", &self.flow)
            .replace("{from_role}", &self.from_role)
            .replace("{from_mpid}", &self.from_mpid)
            .replace("{file_id}", file_id)
    }
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
    fn readings_get_one_decimal() {
        assert_eq!(write_value("01234".into(), FieldFormat::Reading).unwrap(), "1234.0");
        assert_eq!(write_value(Dynamic::from(true), FieldFormat::Bool).unwrap(), "T");
        assert_eq!(write_value("2025-01-08T23:30:00Z".into(), FieldFormat::Date).unwrap(), "20250108");
        assert_eq!(write_value("2025-06-30T23:30:00Z".into(), FieldFormat::Date).unwrap(), "20250701");
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
        let e = check_value(&cat, "fitted\u{2028}tested").unwrap_err();
        assert!(e.contains("U+2028 (a line separator)"), "{e}");
    }
}
