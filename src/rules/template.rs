//! Flow templates (`flow-templates/`).
//!
//! A template says, for one flow, which groups to write in which order and nesting, when a
//! group is written, what it repeats over (one 263 per rate, one 257 per DNO code), and where
//! each field's value comes from (a rhai expression over the request) with its formatting.
//! Every template is checked against the catalogue extract in `flow-templates/catalogue/` when a
//! rule set loads (group codes, nesting, field order and count), and every value against its
//! data item's format when it is written. A new flow is a new file, not new Rust.

use rhai::Dynamic;
use serde::Deserialize;

use crate::dtc::catalogue::{check_value, CatField, CatFlow, Catalogue};
use crate::rules::engine::{Condition, ConditionError, Ctx, RuleFailure, Rules, Subject};
use crate::rules::fast::V;

/// Why a flow template does not fit its catalogue flow, or does not compile: the template file,
/// and the flow, group and item at fault.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{file}: flow {flow} is not in the catalogue")]
    UnknownFlow { file: String, flow: String },
    #[error("{file}: {flow} is version {catalogue} in the catalogue, not {template}")]
    Version { file: String, flow: String, catalogue: String, template: String },
    #[error("{file}: group {group} is not part of {flow}")]
    UnknownGroup { file: String, group: String, flow: String },
    /// `parent` is where the catalogue puts the group, `placed` where the template does (`None`: the top).
    #[error("{file}: group {group} must sit under {}, not {}", .parent.as_deref().unwrap_or("the top"), .placed.as_deref().unwrap_or("the top"))]
    Nesting { file: String, group: String, parent: Option<String>, placed: Option<String> },
    #[error("{file}: group {group} has {template} fields, the catalogue has {catalogue}")]
    FieldCount { file: String, group: String, template: usize, catalogue: usize },
    /// `position` counts from 1.
    #[error("{file}: group {group} field {position} is {catalogue} in the catalogue, the template has {template}")]
    FieldItem { file: String, group: String, position: usize, catalogue: String, template: String },
    #[error("{file}: group {group} item {item} ({name}) is required but has no value")]
    RequiredWithoutValue { file: String, group: String, item: String, name: String },
    #[error("{file}: group {group} is mandatory under {} but the template leaves it out", .parent.as_deref().unwrap_or("the top"))]
    MandatoryGroupMissing { file: String, group: String, parent: Option<String> },
    #[error(transparent)]
    Condition(#[from] ConditionError),
}

/// Why a value a template expression gave cannot be written in its field's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Neither a string nor an integer (its type name).
    #[error("gave a {0}, expected text")]
    NotText(&'static str),
    #[error("gave a {0}, expected true or false")]
    NotBool(&'static str),
    #[error("{0:?} is not a date")]
    NotDate(String),
    #[error("{0:?} is not a date-time")]
    NotDateTime(String),
    #[error("{0:?} is not a reading")]
    NotReading(String),
}

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
    pub(crate) fn compile(file: &str, def: TemplateDef, rules: &Rules, catalogue: &Catalogue) -> Result<Template, TemplateError> {
        let Some(cat) = catalogue.flows.get(&def.flow) else {
            return Err(TemplateError::UnknownFlow { file: file.to_string(), flow: def.flow });
        };
        if cat.version != def.version {
            return Err(TemplateError::Version { file: file.to_string(), flow: def.flow, catalogue: cat.version.clone(), template: def.version });
        }
        let mut groups = Vec::new();
        let tree = compile_groups(file, &def.groups, None, cat, rules, &mut groups)?;
        let top_codes = tree.iter().map(|g| g.code.clone()).collect();
        Ok(Template { flow: def.flow, version: def.version, name: def.name, groups, tree, top_codes })
    }

    /// Writes the group records for one request (each record is its fields, code first), and
    /// counts the top-level ones. `written`, when given, gets the index of every group written.
    pub(crate) fn render<'a>(
        &'a self,
        rules: &'a Rules,
        ctx: &mut Ctx<'a>,
        mut written: Option<&mut Vec<usize>>,
    ) -> Result<(Vec<Vec<String>>, usize), RuleFailure> {
        let mut out = Vec::new();
        render_groups(&self.flow, &self.tree, rules, ctx, &mut out, &mut written)?;
        let top = out.iter().filter(|r| r.first().is_some_and(|c| self.top_codes.contains(c))).count();
        Ok((out, top))
    }
}

impl Template {
    /// Hands `check` every expression of the template as rendering would evaluate it (every
    /// group, whatever its `when`; up to three elements of each `repeat` bound to `each`).
    #[cfg(test)]
    pub(crate) fn each_condition<'a>(&'a self, rules: &'a Rules, ctx: &mut Ctx<'a>, check: &mut dyn FnMut(&mut Ctx<'a>, &'a Condition)) {
        fn walk<'a>(groups: &'a [Group], rules: &'a Rules, ctx: &mut Ctx<'a>, check: &mut dyn FnMut(&mut Ctx<'a>, &'a Condition)) {
            for g in groups {
                if let Some(w) = &g.when {
                    check(ctx, w);
                }
                let elements: Vec<V<'a>> = match &g.repeat {
                    Some(r) => {
                        check(ctx, r);
                        match rules.eval_fast(ctx, r) {
                            Some(V::Arr(a)) => a,
                            _ => match rules.eval(ctx, r) {
                                Ok(v) if v.is_array() => v.into_array().unwrap_or_default().into_iter().map(V::from_dynamic).collect(),
                                _ => vec![],
                            },
                        }
                    }
                    None => vec![V::Unit],
                };
                for each in elements.into_iter().take(3) {
                    let mark = ctx.mark();
                    if g.repeat.is_some() {
                        ctx.push("each", each);
                    }
                    for f in &g.fields {
                        check(ctx, &f.value);
                    }
                    walk(&g.groups, rules, ctx, check);
                    ctx.rewind(mark);
                }
            }
        }
        walk(&self.tree, rules, ctx, check);
    }
}

/// `parent` is the enclosing group's code and path; `infos` gets every group in order.
fn compile_groups(
    file: &str,
    defs: &[GroupDef],
    parent: Option<(&str, &str)>,
    cat: &CatFlow,
    rules: &Rules,
    infos: &mut Vec<GroupInfo>,
) -> Result<Vec<Group>, TemplateError> {
    let (parent, parent_path) = (parent.map(|p| p.0), parent.map(|p| p.1));
    let (file_name, code) = (|| file.to_string(), |g: &GroupDef| g.code.clone());
    let mut out = Vec::new();
    for g in defs {
        let id = infos.len();
        let path = parent_path.map_or_else(|| g.code.clone(), |p| format!("{p}/{}", g.code));
        infos.push(GroupInfo { path: path.clone(), optional: g.when.is_some() || g.repeat.is_some() });
        let Some(cg) = cat.groups.get(&g.code) else {
            return Err(TemplateError::UnknownGroup { file: file_name(), group: code(g), flow: cat.id.clone() });
        };
        if cg.parent.as_deref() != parent {
            return Err(TemplateError::Nesting { file: file_name(), group: code(g), parent: cg.parent.clone(), placed: parent.map(str::to_string) });
        }
        if g.fields.len() != cg.fields.len() {
            return Err(TemplateError::FieldCount { file: file_name(), group: code(g), template: g.fields.len(), catalogue: cg.fields.len() });
        }
        let compile = |what: Subject, src: &str| -> Result<Condition, ConditionError> { rules.compile_condition(what, src) };
        let mut fields = Vec::new();
        for (f, cf) in g.fields.iter().zip(&cg.fields) {
            if f.item != cf.item {
                let (catalogue, template) = (cf.item.clone(), f.item.clone());
                return Err(TemplateError::FieldItem { file: file_name(), group: code(g), position: fields.len() + 1, catalogue, template });
            }
            if cf.required && f.value.is_none() {
                return Err(TemplateError::RequiredWithoutValue { file: file_name(), group: code(g), item: cf.item.clone(), name: cf.name.clone() });
            }
            let what = Subject::TemplateField { file: file_name(), group: code(g), item: f.item.clone() };
            let value = compile(what, f.value.as_deref().unwrap_or("()"))?;
            fields.push(Field { cat: cf.clone(), value, format: f.format });
        }
        let values = rules.batch(fields.iter().map(|f: &Field| &f.value));
        out.push(Group {
            id,
            values,
            code: g.code.clone(),
            when: g.when.as_deref().map(|w| compile(Subject::TemplateWhen { file: file_name(), group: code(g) }, w)).transpose()?,
            repeat: g.repeat.as_deref().map(|w| compile(Subject::TemplateRepeat { file: file_name(), group: code(g) }, w)).transpose()?,
            fields,
            groups: compile_groups(file, &g.groups, Some((&g.code, &path)), cat, rules, infos)?,
        });
    }
    // Every mandatory child group of this level must be written by the template.
    for cg in cat.groups.values().filter(|cg| cg.parent.as_deref() == parent && cg.min > 0) {
        if !defs.iter().any(|g| g.code == cg.code) {
            return Err(TemplateError::MandatoryGroupMissing { file: file_name(), group: cg.code.clone(), parent: parent.map(str::to_string) });
        }
    }
    Ok(out)
}

fn render_groups<'a>(
    flow: &str,
    groups: &'a [Group],
    rules: &'a Rules,
    ctx: &mut Ctx<'a>,
    out: &mut Vec<Vec<String>>,
    written: &mut Option<&mut Vec<usize>>,
) -> Result<(), RuleFailure> {
    for g in groups {
        let fail = |what: &str, message: &dyn std::fmt::Display| RuleFailure { rule: format!("{flow}/{}{what}", g.code), message: message.to_string() };
        if let Some(w) = &g.when {
            if !rules.truth(ctx, w).map_err(|m| fail(" when", &m))? {
                continue;
            }
        }
        let elements: Vec<V<'a>> = match &g.repeat {
            Some(r) => match rules.eval_fast(ctx, r) {
                Some(V::Unit) => vec![],
                Some(V::Arr(a)) => a,
                Some(V::Json(serde_json::Value::Array(a))) => a.iter().map(crate::rules::fast::read).collect(),
                _ => {
                    let v = rules.eval(ctx, r).map_err(|m| fail(" repeat", &m))?;
                    if v.is_unit() {
                        vec![]
                    } else {
                        v.into_array().map_err(|t| fail(" repeat", &format_args!("gave a {t}, not an array")))?.into_iter().map(V::from_dynamic).collect()
                    }
                }
            },
            None => vec![V::Unit],
        };
        for each in elements {
            let mark = ctx.mark();
            if g.repeat.is_some() {
                ctx.push("each", each);
            }
            let mut record = vec![g.code.clone()];
            let conditions: Vec<&Condition> = g.fields.iter().map(|f| &f.value).collect();
            let values = rules.eval_batch(ctx, &g.values, &conditions);
            for (f, value) in g.fields.iter().zip(values) {
                let item = || format!(" {}", f.cat.item);
                let raw = value.map_err(|m| fail(&item(), &m))?;
                let text = write_value(raw, f.format).map_err(|m| fail(&item(), &m))?;
                check_value(&f.cat, &text).map_err(|m| fail(&item(), &m))?;
                record.push(text);
            }
            out.push(record);
            if let Some(w) = written.as_deref_mut() {
                w.push(g.id);
            }
            let r = render_groups(flow, &g.groups, rules, ctx, out, written);
            ctx.rewind(mark);
            r?;
        }
    }
    Ok(())
}

/// Formats one value for a flow file.
fn write_value(v: Dynamic, format: FieldFormat) -> Result<String, WriteError> {
    if v.is_unit() {
        return Ok(String::new());
    }
    let text = || -> Result<String, WriteError> {
        if v.is_string() {
            return Ok(v.clone().into_string().unwrap_or_default());
        }
        if let Ok(i) = v.as_int() {
            return Ok(i.to_string());
        }
        Err(WriteError::NotText(v.type_name()))
    };
    Ok(match format {
        FieldFormat::Text => text()?,
        FieldFormat::Upper => text()?.to_uppercase(),
        FieldFormat::Postcode => crate::dtc::items::postcode(&text()?),
        FieldFormat::Bool => match v.as_bool() {
            Ok(true) => "T".into(),
            Ok(false) => "F".into(),
            Err(t) => return Err(WriteError::NotBool(t)),
        },
        FieldFormat::Date => {
            let s = text()?;
            if let Some(d) = crate::domain::clock::parse_date(&s) {
                crate::domain::clock::dtc_date(d)
            } else if let Some(t) = crate::domain::clock::parse_rfc3339(&s) {
                crate::domain::clock::dtc_date(crate::domain::clock::london(t).date())
            } else {
                return Err(WriteError::NotDate(s));
            }
        }
        FieldFormat::Datetime => {
            let s = text()?;
            let Some(t) = crate::domain::clock::parse_rfc3339(&s) else { return Err(WriteError::NotDateTime(s)) };
            crate::domain::clock::dtc_datetime(crate::domain::clock::london(t))
        }
        FieldFormat::Reading => {
            let s = text()?;
            let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
            let (Ok(n), frac) = (int.parse::<u64>(), frac.chars().next().unwrap_or('0')) else { return Err(WriteError::NotReading(s)) };
            if !frac.is_ascii_digit() {
                return Err(WriteError::NotReading(s));
            }
            format!("{n}.{frac}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_get_one_decimal() {
        assert_eq!(write_value("01234".into(), FieldFormat::Reading).unwrap(), "1234.0");
        assert_eq!(write_value(Dynamic::from(true), FieldFormat::Bool).unwrap(), "T");
        assert_eq!(write_value("2025-01-08T23:30:00Z".into(), FieldFormat::Date).unwrap(), "20250108");
        assert_eq!(write_value("2025-06-30T23:30:00Z".into(), FieldFormat::Date).unwrap(), "20250701");
        assert_eq!(write_value("12a".into(), FieldFormat::Reading).unwrap_err().to_string(), "\"12a\" is not a reading");
        assert_eq!(write_value(Dynamic::from(1.5), FieldFormat::Text).unwrap_err().to_string(), "gave a f64, expected text");
    }
}
