//! The decision for one body: parse → schema → scenario → rules → flows.
//!
//! `decide` is pure: it reads the rule set snapshot and the body and stores nothing, so `serve`,
//! `check` and `test` all call it. Storing and answering are the server's business.

use std::borrow::Cow;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::auth::Client;
use crate::domain::clock::Clock;
use crate::domain::finding::Finding;
use crate::dtc::write::FlowBody;
use crate::rules::engine::{findings_of, Ctx, Level, RuleFailure, Trace};
use crate::rules::fast::V;
use crate::rules::set::RuleSet;

/// What the rule set says of a body.
#[derive(Debug)]
pub enum Verdict {
    Accepted(Accepted),
    /// 400: every finding (schema and rules), capped.
    Rejected(Vec<Finding>),
    /// 500: a rule (or template) failed at run time on a body the schema accepted.
    Failed(RuleFailure),
}

#[derive(Debug)]
pub struct Accepted {
    pub job_id: String,
    pub scenario: String,
    pub scenario_name: String,
    pub warnings: Vec<Finding>,
    pub flows: Vec<FlowBody>,
    /// SHA-256 of the body's canonical JSON (keys sorted, no white space): the idempotency check.
    pub body_hash: String,
    /// The MPAN core and the date of action (`YYYY-MM-DD`, empty if absent): incoming flows
    /// are matched to the request on these.
    pub mpan: String,
    pub date_of_action: String,
}

/// What a decision keeps of what the rules did, besides its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    /// Nothing: the request path.
    No,
    /// Which rules, scenario, flow choices and template groups fired, by index ([`Fired`]): the
    /// reload gate's coverage, without the cost of a trace.
    Fired,
    /// A [`Trace`] of every condition with the body values it read (`flowgate check`).
    Trace,
}

/// The conditions that fired for one body, as indexes into the rule set's `rules`, `scenarios`
/// and `flows`, and each template group written as (flow, group index in the template).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fired {
    pub rules: Vec<usize>,
    pub scenario: Option<usize>,
    pub flows: Vec<usize>,
    pub groups: Vec<(String, usize)>,
}

/// A verdict and, on request, what every rule did.
#[derive(Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub trace: Vec<Trace>,
    /// Filled only with [`Explain::Fired`].
    pub fired: Fired,
    pub revision: String,
}

/// Hex SHA-256 of the canonical form of a JSON value (serde_json's map is sorted by key): the
/// bytes `serde_json::to_vec` writes, fed straight into the hash.
pub(crate) fn canonical_hash(v: &Value) -> String {
    // Written straight into the hash: a body with photos is megabytes, and a second copy of it
    // only to hash it would double what deciding it allocates. A string that needs no escape
    // (every photo) goes to the hash whole, after one check the compiler vectorises, instead
    // of through the serializer's byte-at-a-time escape loop.
    let mut h = Hashing(Sha256::new());
    hash_value(&mut h, v);
    h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

struct Hashing(Sha256);

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether serde_json writes a string's bytes as they are: no control character, quote or
/// backslash (it escapes nothing else). Branch-free within each block, so it runs at memory speed.
fn plain(s: &str) -> bool {
    s.as_bytes().chunks(256).all(|block| block.iter().fold(0u8, |bad, &b| bad | u8::from((b < 0x20) | (b == b'"') | (b == b'\\'))) == 0)
}

/// `v` as `serde_json::to_writer` writes it (compact), into the hash.
fn hash_value(h: &mut Hashing, v: &Value) {
    match v {
        Value::String(s) => hash_str(h, s),
        Value::Array(a) => {
            h.0.update(b"[");
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    h.0.update(b",");
                }
                hash_value(h, item);
            }
            h.0.update(b"]");
        }
        Value::Object(o) => {
            h.0.update(b"{");
            for (i, (k, item)) in o.iter().enumerate() {
                if i > 0 {
                    h.0.update(b",");
                }
                hash_str(h, k);
                h.0.update(b":");
                hash_value(h, item);
            }
            h.0.update(b"}");
        }
        // Null, booleans and numbers: short, and written exactly as serde_json writes them.
        other => {
            let _ = serde_json::to_writer(&mut *h, other);
        }
    }
}

fn hash_str(h: &mut Hashing, s: &str) {
    if plain(s) {
        h.0.update(b"\"");
        h.0.update(s.as_bytes());
        h.0.update(b"\"");
    } else {
        let _ = serde_json::to_writer(&mut *h, s);
    }
}

/// A JSON value read with duplicate object keys refused: parsers disagree on which of two
/// duplicates wins, so a body that has them means different things to different readers.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses a body: JSON (duplicate keys refused), and an object.
pub fn parse(body: &[u8]) -> Result<Value, Finding> {
    let value: Value = serde_json::from_slice::<Strict>(body).map(|s| s.0).map_err(|e| {
        let what = if e.is_eof() { "ends too early" } else { "is not valid JSON" };
        Finding::new("", "json", format!("the body {what}: {e}"))
    })?;
    if !value.is_object() {
        return Err(Finding::new("", "type", "the body must be a JSON object"));
    }
    Ok(value)
}

/// Decides one body for one client; `explain` says what to keep of what the rules did.
pub fn decide(set: &RuleSet, client: &Client, body: &[u8], clock: Clock, explain: Explain) -> Decision {
    decide_parsed(set, client, parse(body), clock, explain)
}

/// [`decide`] for a body already [`parse`]d (the server parses once, to look up an earlier answer).
pub(crate) fn decide_parsed(set: &RuleSet, client: &Client, parsed: Result<Value, Finding>, clock: Clock, explain: Explain) -> Decision {
    let mut fired = Fired::default();
    let value = match parsed {
        Ok(v) => v,
        Err(f) => return Decision { verdict: Verdict::Rejected(vec![f]), trace: vec![], fired, revision: set.revision.clone() },
    };
    let mut trace = Vec::new();
    let verdict = judge(set, client, &value, clock, explain, &mut trace, &mut fired);
    Decision { verdict, trace, fired, revision: set.revision.clone() }
}

fn judge(set: &RuleSet, client: &Client, value: &Value, clock: Clock, explain: Explain, trace: &mut Vec<Trace>, fired: &mut Fired) -> Verdict {
    // A list longer than the contract allows anywhere: refused on that alone, in one walk, so
    // neither the validator nor the rules spend time in proportion to it.
    let oversized = set.schema.oversized_lists(value, set.max_errors.max(1));
    if !oversized.is_empty() {
        return Verdict::Rejected(oversized);
    }
    let mut errors = set.schema.findings_at_most(value, set.max_errors.max(1));
    let mut notes = Notes { set, value, explain, schema_clean: errors.is_empty(), trace, fired };
    let today = crate::domain::clock::iso_date(crate::domain::clock::london(clock.now()).date());
    let mut ctx = Ctx::new(value, &today);

    let scenario = match choose_scenario(&mut ctx, &mut notes) {
        Ok(s) => s,
        Err(failure) => return Verdict::Failed(failure),
    };
    ctx.push("scenario", scenario.map(|s| V::Str(Cow::Borrowed(s.id.as_str()))).unwrap_or(V::Unit));
    let mut warnings = Vec::new();
    if let Err(failure) = run_rules(&mut ctx, &mut notes, &mut errors, &mut warnings) {
        return Verdict::Failed(failure);
    }
    if !errors.is_empty() {
        dedupe(&mut errors);
        errors.truncate(set.max_errors.max(1));
        return Verdict::Rejected(errors);
    }
    let Some(scenario) = scenario else {
        let failure = RuleFailure { rule: "scenarios".into(), message: "no scenario matched this body".into() };
        return Verdict::Failed(failure);
    };

    ctx.push("sender", V::Str(Cow::Borrowed(client.sip_id.as_str())));
    let flows = match choose_flows(&mut ctx, &mut notes, client) {
        Ok(flows) => flows,
        Err(failure) => return Verdict::Failed(failure),
    };

    let text = |pointer: &str| value.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
    Verdict::Accepted(Accepted {
        job_id: text("/job_details/job_id"),
        scenario: scenario.id.clone(),
        scenario_name: scenario.name.clone(),
        warnings,
        flows,
        body_hash: canonical_hash(value),
        mpan: text("/job_details/mpan"),
        date_of_action: text("/job_completion/date_of_action"),
    })
}

/// What a decision records as it goes: a trace of every condition (when asked to explain) and
/// what fired (for the gate's coverage).
struct Notes<'a> {
    set: &'a RuleSet,
    value: &'a Value,
    explain: Explain,
    /// A rule that fails at run time on a body the schema already rejected (a wrong type, say)
    /// is noted and passed over; on a schema-clean body it is a 500 naming the rule.
    schema_clean: bool,
    trace: &'a mut Vec<Trace>,
    fired: &'a mut Fired,
}

impl Notes<'_> {
    fn note(&mut self, rule: &str, kind: &'static str, source: &str, fired: bool, failed: Option<String>) {
        if self.explain == Explain::Trace {
            let values = self.set.rules.values_read(source, self.value);
            self.trace.push(Trace { rule: rule.to_string(), kind, fired, condition: source.to_string(), values, failed });
        }
    }

    fn cover(&self) -> bool {
        self.explain == Explain::Fired
    }
}

/// The first scenario whose condition holds, if any.
fn choose_scenario<'s>(ctx: &mut Ctx<'_>, notes: &mut Notes<'s>) -> Result<Option<&'s crate::rules::engine::Scenario>, RuleFailure> {
    let rules = &notes.set.rules;
    let conditions: Vec<_> = rules.scenarios.iter().map(|s| &s.when).collect();
    let values = rules.eval_batch(ctx, &rules.scenarios_batch, &conditions);
    for (i, (s, value)) in rules.scenarios.iter().zip(values).enumerate() {
        match value.and_then(crate::rules::engine::truth_of) {
            Ok(true) => {
                notes.note(&s.id, "scenario", &s.when.source, true, None);
                if notes.cover() {
                    notes.fired.scenario = Some(i);
                }
                return Ok(Some(s));
            }
            Ok(false) => notes.note(&s.id, "scenario", &s.when.source, false, None),
            Err(m) if notes.schema_clean => return Err(RuleFailure { rule: s.id.clone(), message: m.to_string() }),
            Err(m) => notes.note(&s.id, "scenario", &s.when.source, false, Some(m.to_string())),
        }
    }
    Ok(None)
}

/// Every rule, its findings added to the errors or the warnings by its level.
fn run_rules(ctx: &mut Ctx<'_>, notes: &mut Notes<'_>, errors: &mut Vec<Finding>, warnings: &mut Vec<Finding>) -> Result<(), RuleFailure> {
    let rules = &notes.set.rules;
    let conditions: Vec<_> = rules.rules.iter().map(|r| &r.when).collect();
    let values = rules.eval_batch(ctx, &rules.rules_batch, &conditions);
    for (i, (r, value)) in rules.rules.iter().zip(values).enumerate() {
        match value.and_then(|v| findings_of(&r.def, v)) {
            Ok(found) => {
                notes.note(&r.def.id, "rule", &r.when.source, !found.is_empty(), None);
                if notes.cover() && !found.is_empty() {
                    notes.fired.rules.push(i);
                }
                match r.def.level {
                    Level::Error => errors.extend(found),
                    Level::Warning => warnings.extend(found),
                }
            }
            Err(m) if notes.schema_clean => return Err(RuleFailure { rule: r.def.id.clone(), message: m.to_string() }),
            Err(m) => notes.note(&r.def.id, "rule", &r.when.source, false, Some(m.to_string())),
        }
    }
    Ok(())
}

/// The flow files the chosen flows write, in the order the choices are listed.
fn choose_flows<'a>(ctx: &mut Ctx<'a>, notes: &mut Notes<'a>, client: &Client) -> Result<Vec<FlowBody>, RuleFailure> {
    let rules = &notes.set.rules;
    let mut flows = Vec::new();
    let conditions: Vec<_> = rules.flows.iter().map(|f| &f.when).collect();
    let values = rules.eval_batch(ctx, &rules.flows_batch, &conditions);
    for (i, (choice, value)) in rules.flows.iter().zip(values).enumerate() {
        match value.and_then(crate::rules::engine::truth_of) {
            Ok(false) => {
                notes.note(&choice.def.id, "flow", &choice.when.source, false, None);
                continue;
            }
            Ok(true) => {
                notes.note(&choice.def.id, "flow", &choice.when.source, true, None);
                if notes.cover() {
                    notes.fired.flows.push(i);
                }
            }
            Err(m) => return Err(RuleFailure { rule: choice.def.id.clone(), message: m.to_string() }),
        }
        flows.push(render_flow(ctx, notes, client, choice)?);
    }
    Ok(flows)
}

/// One chosen flow: its recipient, then its template filled.
fn render_flow<'a>(ctx: &mut Ctx<'a>, notes: &mut Notes<'a>, client: &Client, choice: &crate::rules::engine::FlowChoice) -> Result<FlowBody, RuleFailure> {
    let (set, rules) = (notes.set, &notes.set.rules);
    let fail = |m: String| RuleFailure { rule: choice.def.id.clone(), message: m };
    let recipient = rules.recipients.get(&choice.def.to).ok_or_else(|| fail(format!("unknown recipient {}", choice.def.to)))?;
    let to_role = set.roles.get(&recipient.role).ok_or_else(|| fail(format!("no role code for {}", recipient.role)))?;
    let mpid = rules.eval(ctx, &recipient.mpid).map_err(|e| fail(e.to_string()))?;
    let to_mpid = mpid.into_string().map_err(|t| fail(format!("the recipient's MPID is a {t}, not text")))?;
    if to_mpid.len() != 4 || !to_mpid.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
        return Err(fail(format!("the recipient's MPID {to_mpid:?} is not 4 upper-case letters or digits")));
    }
    let template = set.templates.get(&choice.def.flow).ok_or_else(|| fail(format!("no template for {}", choice.def.flow)))?;
    let mark = ctx.mark();
    ctx.push("recipient", V::Str(Cow::Owned(to_mpid.clone())));
    let mut written = Vec::new();
    let rendered = template.render(rules, ctx, notes.cover().then_some(&mut written));
    notes.fired.groups.extend(written.into_iter().map(|g| (template.flow.clone(), g)));
    ctx.rewind(mark);
    let (records, top_level) = rendered?;
    Ok(FlowBody {
        flow: template.flow.clone(),
        version: template.version.clone(),
        from_role: set.sender_role.clone(),
        from_mpid: client.sip_id.clone(),
        to_role: to_role.clone(),
        to_mpid,
        records,
        top_level,
    })
}

/// The same pointer and rule reported twice (schema `if`/`then` and a rule, say) is one finding.
fn dedupe(findings: &mut Vec<Finding>) {
    let mut seen = std::collections::HashSet::new();
    findings.retain(|f| seen.insert((f.pointer.clone(), f.rule.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_hash_is_of_sorted_keys_without_white_space() {
        let v: Value = serde_json::from_str("{ \"b\": 1, \"a\": [1, \"\\u00e9\"] }").unwrap();
        // SHA-256 of {"a":[1,"é"],"b":1}
        assert_eq!(canonical_hash(&v), "8717ac25ea6b88548fae92fcf938c6f0764f85913ba025812e1859bf0166f5d8");
    }

    #[test]
    fn the_canonical_hash_is_of_what_serde_json_writes() {
        let text = r#"{"z": [null, true, false, -0.5, 1e300, 18446744073709551615, -9223372036854775808, "a\"b", "\u0001\t", "\\", "\u007f é 😀", {}], "é": {"y": "", "x": [[]]}, "": 0}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let expected: String = Sha256::digest(serde_json::to_vec(&v).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(canonical_hash(&v), expected);
        let long = Value::String("QUJD".repeat(100_000) + "\"");
        let expected: String = Sha256::digest(serde_json::to_vec(&long).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(canonical_hash(&long), expected);
    }
}
