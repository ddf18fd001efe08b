//! Step 2 of a decision: the rhai rule set (`rules/`).
//!
//! `rules/*.yaml` hold the rules as data: each rule has an id, a level (error or warning), the
//! pointer it blames, a message and a `when` condition written in rhai. The same files hold the
//! scenario table (evaluated in order, first match wins), the choice of flows and recipients,
//! and the distributor table. `rules/*.rhai` hold helper functions the conditions may call.
//!
//! Everything is compiled once per rule set. rhai runs sandboxed: no modules (so no file access),
//! no printing, and limits on operations, call depth, expression depth, string, array and map
//! sizes, plus a wall-clock deadline per condition through the progress callback.
//!
//! Each condition also gets a fast program when its shapes allow ([`crate::rules::fast`]): it
//! reads the parsed body in place, and rhai (and the rhai scope, built only then) runs only the
//! conditions without one or where the program gives up.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Scope, AST, INT};
use serde::Deserialize;
use serde_json::Value;

use crate::config::RhaiLimits;
use crate::domain::finding::Finding;
use crate::dtc::items::{address_lines, mpan_check_ok, postcode};
pub use crate::rules::body::Distributor;
use crate::rules::body::{to_dynamic, BLOCKS};

/// One rules YAML file; every section is optional, the files of `rules/` are merged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    #[serde(default)]
    pub scenarios: Vec<ScenarioDef>,
    #[serde(default)]
    pub flows: Vec<FlowChoiceDef>,
    #[serde(default)]
    pub recipients: BTreeMap<String, RecipientDef>,
    #[serde(default)]
    pub distributors: Vec<Distributor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
}

/// A rule as written: `when` is a rhai expression giving true (fires at `pointer`), false or (),
/// a pointer string, an array of pointers, or maps `#{pointer, message}` for several places.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: String,
    #[serde(default = "default_level")]
    pub level: Level,
    pub pointer: String,
    pub message: String,
    pub when: String,
    /// What the rule is for, in the analyst's words (shown by `check`).
    #[serde(default)]
    pub note: Option<String>,
}

fn default_level() -> Level {
    Level::Error
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioDef {
    pub id: String,
    pub name: String,
    pub when: String,
}

/// A flow to produce: which definition, to which recipient, when.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowChoiceDef {
    pub id: String,
    pub flow: String,
    pub to: String,
    pub when: String,
}

/// A kind of recipient: its role (a key of `flows.roles` in the configuration) and an
/// expression giving its MPID.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientDef {
    pub role: String,
    pub mpid: String,
}

/// A compiled condition with the text it came from, and its fast program when it has the shapes
/// the fast path knows ([`crate::rules::fast`]).
pub struct Condition {
    pub source: String,
    ast: AST,
    fast: Option<crate::rules::fast::Prog>,
}

impl Condition {
    /// Whether the condition has a fast program (rhai still runs it where the program gives up).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }
}

pub struct Rule {
    pub def: RuleDef,
    pub when: Condition,
}

/// The conditions of a list that have no fast program, compiled into one script that gives all
/// their values as an array: one rhai evaluation instead of many (the fixed cost of an evaluation
/// dominates small conditions). Each condition is a block of its own, so its `let`s do not leak
/// into the next. When the batch fails, the conditions are run one by one to name the one that
/// failed.
pub struct Batch {
    ast: Option<AST>,
    /// The positions in the list of the conditions the script holds.
    slow: Vec<usize>,
}

pub struct Scenario {
    pub id: String,
    pub name: String,
    pub when: Condition,
}

pub struct FlowChoice {
    pub def: FlowChoiceDef,
    pub when: Condition,
}

pub struct Recipient {
    pub role: String,
    pub mpid: Condition,
}

/// A rule (or scenario, flow choice, template field) that failed at run time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rule {rule} failed: {message}")]
pub struct RuleFailure {
    pub rule: String,
    pub message: String,
}

/// What a condition is compiled for, as a compile error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Rule(String),
    Scenario(String),
    Recipient(String),
    FlowChoice(String),
    /// A field's value in a flow template: the template file, the group code and the data item.
    TemplateField {
        file: String,
        group: String,
        item: String,
    },
    /// A template group's `when`.
    TemplateWhen {
        file: String,
        group: String,
    },
    /// A template group's `repeat`.
    TemplateRepeat {
        file: String,
        group: String,
    },
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Rule(id) => write!(f, "rule {id:?}"),
            Subject::Scenario(id) => write!(f, "scenario {id:?}"),
            Subject::Recipient(name) => write!(f, "recipient {name:?}"),
            Subject::FlowChoice(id) => write!(f, "flow choice {id:?}"),
            Subject::TemplateField { file, group, item } => write!(f, "{file}: {group} {item}"),
            Subject::TemplateWhen { file, group } => write!(f, "{file}: {group} when"),
            Subject::TemplateRepeat { file, group } => write!(f, "{file}: {group} repeat"),
        }
    }
}

/// A condition that does not compile.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConditionError {
    #[error("{0}: the condition is empty")]
    Empty(Subject),
    #[error("{subject}: {source}")]
    Parse { subject: Subject, source: rhai::ParseError },
}

/// Why the rules files and helpers of a set do not compile: the file, rule or entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{file}: distributor {id:?}: id must be 2 digits and mpid 4 characters")]
    Distributor { file: String, id: String },
    #[error("{file}: recipient {recipient:?} is defined twice")]
    RecipientTwice { file: String, recipient: String },
    /// A helpers file (`rules/*.rhai`) that does not parse.
    #[error("{file}: {source}")]
    Helpers { file: String, source: rhai::ParseError },
    /// A helpers file whose top level fails when it is run into a module.
    #[error("{file}: {source}")]
    HelpersRun { file: String, source: Box<EvalAltResult> },
    #[error("rule {id:?} is defined twice")]
    RuleTwice { id: String },
    #[error("rule {id:?}: pointer must start with /")]
    Pointer { id: String },
    #[error(transparent)]
    Condition(#[from] ConditionError),
    #[error("no scenarios are defined")]
    NoScenarios,
    #[error("flow choice {choice:?}: unknown recipient {recipient:?}")]
    UnknownRecipient { choice: String, recipient: String },
}

/// Why a condition gave no usable value at run time.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("stopped: ran past its deadline of {} ms", .timeout.as_millis())]
    Deadline { timeout: Duration },
    #[error("stopped: too many operations (a loop that does not end?)")]
    TooManyOperations,
    /// Any other error rhai reports (a missing property, a type mismatch, a limit).
    #[error(transparent)]
    Script(Box<EvalAltResult>),
    /// A yes/no condition gave something else (its type name).
    #[error("the condition gave a {0}, not true or false")]
    NotTruth(&'static str),
    /// A rule gave something that stands for no findings (its type name).
    #[error("the condition gave a {0}, not true/false, a pointer or a list of pointers")]
    NotFindings(&'static str),
}

/// What one rule did for one body (for `check` and the explanation).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trace {
    pub rule: String,
    pub kind: &'static str,
    pub fired: bool,
    pub condition: String,
    /// The request values the condition reads, as found in the body.
    pub values: BTreeMap<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// The compiled rule set.
pub struct Rules {
    pub engine: Engine,
    pub rules: Vec<Rule>,
    pub rules_batch: Batch,
    pub scenarios_batch: Batch,
    pub flows_batch: Batch,
    pub scenarios: Vec<Scenario>,
    pub flows: Vec<FlowChoice>,
    pub recipients: BTreeMap<String, Recipient>,
    pub distributors: Arc<BTreeMap<String, Distributor>>,
    /// The text of each helper function's body, by name (for explanations).
    pub helper_bodies: BTreeMap<String, String>,
    /// The script helpers' fast programs.
    lib: crate::rules::fast::Lib,
    timeout: Duration,
}

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// rhai evaluations on this thread (the fast path's tests count them).
    static RHAI_RUNS: Cell<u64> = const { Cell::new(0) };
}

/// How many rhai evaluations this thread has run.
#[cfg(test)]
pub(crate) fn rhai_runs() -> u64 {
    RHAI_RUNS.with(Cell::get)
}

/// The rule files as one: their rules, scenarios and flow choices in file order, their
/// recipients (each named once) and the distributor table.
fn merge(files: Vec<(String, RulesFile)>) -> Result<(RulesFile, BTreeMap<String, Distributor>), CompileError> {
    let mut distributors = BTreeMap::new();
    let mut merged = RulesFile::default();
    for (name, f) in files {
        for d in f.distributors {
            if d.id.len() != 2 || d.mpid.len() != 4 {
                return Err(CompileError::Distributor { file: name, id: d.id });
            }
            distributors.insert(d.id.clone(), d);
        }
        merged.rules.extend(f.rules);
        merged.scenarios.extend(f.scenarios);
        merged.flows.extend(f.flows);
        for (k, r) in f.recipients {
            if merged.recipients.insert(k.clone(), r).is_some() {
                return Err(CompileError::RecipientTwice { file: name, recipient: k });
            }
        }
    }
    Ok((merged, distributors))
}

/// A sandboxed engine with the helper functions every condition may call.
pub(crate) fn new_engine(limits: &RhaiLimits, distributors: Arc<BTreeMap<String, Distributor>>) -> Engine {
    let mut engine = Engine::new();
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    // No evaluating strings as scripts: every rule is compiled (and checked) when the set loads.
    engine.disable_symbol("eval");
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    // No string interner: with `sync` it is one lock shared by every worker, and rhai's lock
    // sleeps 10 ms when it finds it taken (a stall per contended request under load).
    engine.set_max_strings_interned(0);
    // Reading the clock costs more than a small operation: look at it every 256 operations.
    engine.on_progress(|ops| {
        if ops % 256 != 0 {
            return None;
        }
        let late = DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() > t));
        late.then(|| Dynamic::from("deadline"))
    });
    register_helpers(&mut engine, distributors);
    engine
}

/// The text of a value, if it is a string.
fn text_of(d: &Dynamic) -> Option<String> {
    d.is_string().then(|| d.clone().into_string().unwrap_or_default())
}

/// Helpers take any value, so a condition over a body with a wrong type (which the schema
/// reports) does not fail on "function not found": a non-string simply is not a valid one.
fn register_helpers(engine: &mut Engine, distributors: Arc<BTreeMap<String, Distributor>>) {
    engine.register_fn("mpan_check_ok", |d: Dynamic| text_of(&d).is_some_and(|s| mpan_check_ok(&s)));
    engine.register_fn("distributor", move |d: Dynamic| -> Dynamic {
        let Some(mpan) = text_of(&d) else { return Dynamic::UNIT };
        let Some(d) = mpan.get(..2).and_then(|id| distributors.get(id)) else { return Dynamic::UNIT };
        let mut m = Map::new();
        m.insert("id".into(), d.id.clone().into());
        m.insert("name".into(), d.name.clone().into());
        m.insert("mpid".into(), d.mpid.clone().into());
        m.insert("kind".into(), d.kind.clone().into());
        m.into()
    });
    // The Europe/London date of an RFC 3339 instant, `YYYY-MM-DD`, or () if it is not one.
    engine.register_fn("london_date", |d: Dynamic| -> Dynamic {
        text_of(&d)
            .and_then(|s| crate::domain::clock::parse_rfc3339(&s))
            .map(|t| crate::domain::clock::iso_date(crate::domain::clock::london(t).date()).into())
            .unwrap_or(Dynamic::UNIT)
    });
    // Seconds since 1970 of an RFC 3339 instant, or ().
    engine.register_fn("epoch", |d: Dynamic| -> Dynamic {
        text_of(&d).and_then(|s| crate::domain::clock::parse_rfc3339(&s)).map(|t| Dynamic::from(t.unix_timestamp() as INT)).unwrap_or(Dynamic::UNIT)
    });
    engine.register_fn("is_date", |d: Dynamic| text_of(&d).is_some_and(|s| crate::domain::clock::parse_date(&s).is_some()));
    engine.register_fn("address_lines", |d: Dynamic| -> Array {
        text_of(&d).map(|s| address_lines(&s).into_iter().map(Dynamic::from).collect()).unwrap_or_default()
    });
    // Line `k` (0-based) of the DTC address: the address split on commas into lines of at most
    // 40 characters, then the town; () past the last line.
    engine.register_fn("address_line", |address: Dynamic, town: Dynamic, k: INT| -> Dynamic {
        let mut lines = text_of(&address).map(|s| address_lines(&s)).unwrap_or_default();
        lines.extend(text_of(&town));
        usize::try_from(k).ok().and_then(|k| lines.into_iter().nth(k)).map(Dynamic::from).unwrap_or(Dynamic::UNIT)
    });
    engine.register_fn("postcode", |d: Dynamic| -> Dynamic { text_of(&d).map(|s| postcode(&s).into()).unwrap_or(Dynamic::UNIT) });
    engine.register_fn("clip", |d: Dynamic, n: INT| -> Dynamic {
        text_of(&d).map(|s| s.chars().take(usize::try_from(n).unwrap_or(0)).collect::<String>().into()).unwrap_or(Dynamic::UNIT)
    });
    engine.register_fn("is_digits", |d: Dynamic| text_of(&d).is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())));
    engine.register_fn("is_blank", |d: Dynamic| text_of(&d).is_none_or(|s| s.trim().is_empty()));
    engine.register_fn("present", |d: Dynamic| !d.is_unit());
    engine.register_fn("is_true", |d: Dynamic| d.as_bool().unwrap_or(false));
    engine.register_fn("is_false", |d: Dynamic| d.as_bool().is_ok_and(|b| !b));
}

/// The scope a body is judged in: `body`, each block by its short name (an empty map when the
/// block is absent or not an object), `today` (Europe/London) and, once chosen, `scenario`.
pub fn scope_for(body: &Value, today: &str) -> Scope<'static> {
    let mut scope = Scope::new();
    let dynamic = to_dynamic(body);
    for (short, name) in BLOCKS {
        let block = match body.get(name) {
            Some(v @ Value::Object(_)) => to_dynamic(v),
            _ => Dynamic::from_map(Map::new()),
        };
        scope.push_constant_dynamic(short, block);
    }
    scope.push_constant_dynamic("body", dynamic);
    scope.push_constant("today", ImmutableString::from(today));
    scope
}

impl Rules {
    /// Compiles every condition; the first error names the file and rule.
    pub(crate) fn compile(files: Vec<(String, RulesFile)>, helpers: Vec<(String, String)>, limits: &RhaiLimits) -> Result<Rules, CompileError> {
        let (merged, distributors) = merge(files)?;
        let distributors = Arc::new(distributors);
        let mut engine = new_engine(limits, distributors.clone());
        let mut helper_bodies = BTreeMap::new();
        for (_, source) in &helpers {
            helper_bodies.extend(function_bodies(source));
        }
        let mut helper_asts = Vec::new();
        for (name, source) in helpers {
            let ast = match engine.compile(&source) {
                Ok(ast) => ast,
                Err(source) => return Err(CompileError::Helpers { file: name, source }),
            };
            let module = match rhai::Module::eval_ast_as_new(Scope::new(), &ast, &engine) {
                Ok(module) => module,
                Err(source) => return Err(CompileError::HelpersRun { file: name, source }),
            };
            engine.register_global_module(module.into());
            helper_asts.push(ast);
        }
        let lib = crate::rules::fast::Lib::new(&helper_asts, distributors.clone(), limits);
        let compile = |what: Subject, src: &str| compile_condition(&engine, &lib, what, src);
        let mut seen = std::collections::HashSet::new();
        let mut rules = Vec::new();
        for def in merged.rules {
            if !seen.insert(def.id.clone()) {
                return Err(CompileError::RuleTwice { id: def.id });
            }
            if !def.pointer.starts_with('/') {
                return Err(CompileError::Pointer { id: def.id });
            }
            let when = compile(Subject::Rule(def.id.clone()), &def.when)?;
            rules.push(Rule { def, when });
        }
        let mut scenarios = Vec::new();
        for s in merged.scenarios {
            let when = compile(Subject::Scenario(s.id.clone()), &s.when)?;
            scenarios.push(Scenario { id: s.id, name: s.name, when });
        }
        if scenarios.is_empty() {
            return Err(CompileError::NoScenarios);
        }
        let mut recipients = BTreeMap::new();
        for (k, r) in merged.recipients {
            let mpid = compile(Subject::Recipient(k.clone()), &r.mpid)?;
            recipients.insert(k, Recipient { role: r.role, mpid });
        }
        let mut flows = Vec::new();
        for def in merged.flows {
            if !recipients.contains_key(&def.to) {
                return Err(CompileError::UnknownRecipient { choice: def.id, recipient: def.to });
            }
            let when = compile(Subject::FlowChoice(def.id.clone()), &def.when)?;
            flows.push(FlowChoice { def, when });
        }
        let rules_batch = batch(&engine, rules.iter().map(|r| &r.when));
        let scenarios_batch = batch(&engine, scenarios.iter().map(|s| &s.when));
        let flows_batch = batch(&engine, flows.iter().map(|f| &f.when));
        Ok(Rules {
            engine,
            rules,
            rules_batch,
            scenarios_batch,
            flows_batch,
            scenarios,
            flows,
            recipients,
            distributors,
            helper_bodies,
            lib,
            timeout: Duration::from_millis(limits.timeout_ms),
        })
    }

    /// The body values a condition reads, directly (`exec.site_de_energised`) or through the
    /// helpers it calls (their parameters named after the blocks, as helpers.rhai does).
    pub(crate) fn values_read(&self, source: &str, body: &Value) -> BTreeMap<String, Value> {
        let mut out = values_read(source, body);
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = called(source);
        while let Some(name) = todo.pop() {
            if seen.len() > 64 || !seen.insert(name.clone()) {
                continue;
            }
            if let Some(text) = self.helper_bodies.get(&name) {
                out.extend(values_read(text, body));
                todo.extend(called(text));
            }
        }
        out
    }

    /// Compiles an expression with this rule set's engine (templates use it too).
    pub(crate) fn compile_condition(&self, what: Subject, src: &str) -> Result<Condition, ConditionError> {
        compile_condition(&self.engine, &self.lib, what, src)
    }

    /// Compiles a batch of conditions with this rule set's engine.
    pub(crate) fn batch<'a>(&self, conditions: impl Iterator<Item = &'a Condition>) -> Batch {
        batch(&self.engine, conditions)
    }

    /// The values of every condition of a list, each as [`Rules::eval`] would give it: the fast
    /// programs first, then the conditions without one in one rhai evaluation (`batch`, built
    /// for this list), and any whose fast program gave up one by one.
    pub(crate) fn eval_batch(&self, ctx: &mut Ctx<'_>, batch: &Batch, conditions: &[&Condition]) -> Vec<Result<Dynamic, EvalError>> {
        let mut out: Vec<Option<Result<Dynamic, EvalError>>> =
            conditions.iter().map(|c| c.fast.as_ref().and_then(|p| self.lib.run(p, &ctx.env)).map(|v| Ok(v.to_dynamic()))).collect();
        if !batch.slow.is_empty() && batch.slow.iter().all(|&i| out.get(i).is_some_and(Option::is_none)) {
            let slow: Vec<&Condition> = batch.slow.iter().map(|&i| conditions[i]).collect();
            let values = self.run_batch(ctx.scope(), batch, &slow);
            for (&i, v) in batch.slow.iter().zip(values) {
                out[i] = Some(v);
            }
        }
        let mut values = Vec::with_capacity(out.len());
        for (v, c) in out.into_iter().zip(conditions) {
            values.push(match v {
                Some(v) => v,
                None => self.run(ctx.scope(), c),
            });
        }
        values
    }

    /// A condition's value: its fast program's, or rhai's where it has none or it gives up.
    pub(crate) fn eval(&self, ctx: &mut Ctx<'_>, cond: &Condition) -> Result<Dynamic, EvalError> {
        if let Some(v) = cond.fast.as_ref().and_then(|p| self.lib.run(p, &ctx.env)) {
            return Ok(v.to_dynamic());
        }
        self.run(ctx.scope(), cond)
    }

    /// [`Rules::eval`] kept as a fast path value (a template's `repeat`, whose elements become
    /// `each`); `None` when there is no fast answer.
    pub(crate) fn eval_fast<'a>(&'a self, ctx: &Ctx<'a>, cond: &'a Condition) -> Option<crate::rules::fast::V<'a>> {
        cond.fast.as_ref().and_then(|p| self.lib.run(p, &ctx.env))
    }

    /// The values of the conditions of a batch's script, in one rhai evaluation when all goes
    /// well, one per condition (to name the failing one) when it does not.
    fn run_batch(&self, scope: &mut Scope<'static>, batch: &Batch, conditions: &[&Condition]) -> Vec<Result<Dynamic, EvalError>> {
        if let Some(ast) = &batch.ast {
            RHAI_RUNS.with(|n| n.set(n.get() + 1));
            let mark = scope.len();
            DEADLINE.with(|d| d.set(Some(Instant::now() + self.timeout)));
            let result = self.engine.eval_ast_with_scope::<Array>(scope, ast);
            DEADLINE.with(|d| d.set(None));
            scope.rewind(mark);
            if let Ok(values) = result {
                if values.len() == batch.slow.len() {
                    return values.into_iter().map(Ok).collect();
                }
            }
        }
        conditions.iter().map(|c| self.run(scope, c)).collect()
    }

    /// Runs one condition under the deadline; new variables it declares are dropped after.
    pub fn run(&self, scope: &mut Scope<'static>, cond: &Condition) -> Result<Dynamic, EvalError> {
        RHAI_RUNS.with(|n| n.set(n.get() + 1));
        let mark = scope.len();
        DEADLINE.with(|d| d.set(Some(Instant::now() + self.timeout)));
        let result = self.engine.eval_ast_with_scope::<Dynamic>(scope, &cond.ast);
        DEADLINE.with(|d| d.set(None));
        scope.rewind(mark);
        result.map_err(|e| describe(e, self.timeout))
    }

    /// A condition's value from its fast program (`None`: none, or it gave up) and from rhai.
    #[cfg(test)]
    pub(crate) fn both(&self, ctx: &mut Ctx<'_>, cond: &Condition) -> (Option<Dynamic>, Result<Dynamic, EvalError>) {
        let fast = cond.fast.as_ref().and_then(|p| self.lib.run(p, &ctx.env)).map(|v| v.to_dynamic());
        (fast, self.run(ctx.scope(), cond))
    }

    /// Evaluates a condition as a yes/no question: () counts as no.
    pub(crate) fn truth(&self, ctx: &mut Ctx<'_>, cond: &Condition) -> Result<bool, EvalError> {
        truth_of(self.eval(ctx, cond)?)
    }
}

/// What a body is judged with: the body itself and the variables pushed as the decision goes,
/// read in place by the fast programs; the rhai scope is built only when a condition runs in rhai.
pub struct Ctx<'a> {
    env: crate::rules::fast::Env<'a>,
    scope: Option<Scope<'static>>,
    /// The length of the scope `scope_for` builds.
    base: usize,
}

impl<'a> Ctx<'a> {
    pub fn new(body: &'a Value, today: &'a str) -> Ctx<'a> {
        Ctx { env: crate::rules::fast::Env::new(body, today), scope: None, base: 0 }
    }

    /// Binds a variable (`scenario`, `sender`, `recipient`, `each`) for what is evaluated next.
    pub(crate) fn push(&mut self, name: &'static str, value: crate::rules::fast::V<'a>) {
        self.env.vars.push((name, value));
    }

    pub(crate) fn mark(&self) -> usize {
        self.env.vars.len()
    }

    /// Drops the variables bound since `mark`.
    pub(crate) fn rewind(&mut self, mark: usize) {
        self.env.vars.truncate(mark);
    }

    /// The rhai scope with the body and the variables bound now (built on first use).
    fn scope(&mut self) -> &mut Scope<'static> {
        let (env, base) = (&self.env, &mut self.base);
        let scope = self.scope.get_or_insert_with(|| {
            let s = scope_for(env.body, env.today);
            *base = s.len();
            s
        });
        scope.rewind(*base);
        for (name, value) in &env.vars {
            scope.push_constant_dynamic(*name, value.to_dynamic());
        }
        scope
    }
}

fn batch<'a>(engine: &Engine, conditions: impl Iterator<Item = &'a Condition>) -> Batch {
    let mut script = String::from("[\n");
    let mut slow = Vec::new();
    for (i, c) in conditions.enumerate() {
        if c.fast.is_some() {
            continue;
        }
        // A `return` would leave the whole batch, not its own block: such a set runs one by one.
        if c.source.contains("return") {
            return Batch { ast: None, slow: vec![] };
        }
        script.push_str("{\n");
        script.push_str(&c.source);
        script.push_str("\n},\n");
        slow.push(i);
    }
    script.push(']');
    if slow.is_empty() {
        return Batch { ast: None, slow };
    }
    // A condition that does not fit a block (it declares a function, say) runs on its own.
    Batch { ast: engine.compile(&script).ok(), slow }
}

/// A value as a yes/no answer: () counts as no.
pub(crate) fn truth_of(v: Dynamic) -> Result<bool, EvalError> {
    if v.is_unit() {
        return Ok(false);
    }
    v.as_bool().map_err(EvalError::NotTruth)
}

fn compile_condition(engine: &Engine, lib: &crate::rules::fast::Lib, what: Subject, src: &str) -> Result<Condition, ConditionError> {
    if src.trim().is_empty() {
        return Err(ConditionError::Empty(what));
    }
    match engine.compile(src) {
        Ok(ast) => Ok(Condition { source: src.trim().to_string(), fast: lib.compile(&ast), ast }),
        Err(source) => Err(ConditionError::Parse { subject: what, source }),
    }
}

fn describe(e: Box<EvalAltResult>, timeout: Duration) -> EvalError {
    match &*e {
        EvalAltResult::ErrorTerminated(..) => EvalError::Deadline { timeout },
        EvalAltResult::ErrorTooManyOperations(..) => EvalError::TooManyOperations,
        _ => EvalError::Script(e),
    }
}

/// The findings a rule's result stands for.
pub(crate) fn findings_of(rule: &RuleDef, result: Dynamic) -> Result<Vec<Finding>, EvalError> {
    let one = |pointer: String, message: Option<String>| Finding::new(pointer, rule.id.clone(), message.unwrap_or_else(|| rule.message.clone()));
    if result.is_unit() {
        return Ok(vec![]);
    }
    if let Ok(b) = result.as_bool() {
        return Ok(if b { vec![one(rule.pointer.clone(), None)] } else { vec![] });
    }
    let items = if result.is_array() { result.into_array().unwrap_or_default() } else { vec![result] };
    let mut out = Vec::new();
    for item in items {
        if item.is_string() {
            out.push(one(item.into_string().unwrap_or_default(), None));
        } else if let Some(m) = item.clone().try_cast::<Map>() {
            let pointer = m.get("pointer").and_then(|p| p.clone().into_string().ok()).unwrap_or_else(|| rule.pointer.clone());
            let message = m.get("message").and_then(|p| p.clone().into_string().ok());
            out.push(one(pointer, message));
        } else {
            return Err(EvalError::NotFindings(item.type_name()));
        }
    }
    Ok(out)
}

/// The `block.field` paths a condition reads, with their values in the body (for `check`).
/// The names of the functions `source` calls (an identifier followed by `(`).
fn called(source: &str) -> Vec<String> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i == start {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if bytes.get(j) == Some(&b'(') && (start == 0 || bytes[start - 1] != b'.') {
            out.push(source[start..i].to_string());
        }
    }
    out
}

/// The body text of each `fn name(...) { ... }` in a helpers file, by name (braces matched as
/// text: good enough to explain, never run).
pub(crate) fn function_bodies(source: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = source;
    while let Some(at) = rest.find("fn ") {
        let after = &rest[at + 3..];
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let Some(open) = after.find('{') else { break };
        let mut depth = 0usize;
        let mut end = None;
        for (k, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = Some(open + k);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        if !name.is_empty() && (at == 0 || rest.as_bytes()[at - 1].is_ascii_whitespace()) {
            out.insert(name, after[open + 1..end].to_string());
        }
        rest = &after[end + 1..];
    }
    out
}

pub(crate) fn values_read(source: &str, body: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.' || bytes[i] == b'?') {
            i += 1;
        }
        if i == start {
            i += 1;
            continue;
        }
        let token = source[start..i].replace("?.", ".");
        let mut parts = token.split('.');
        let (Some(head), Some(field)) = (parts.next(), parts.next()) else { continue };
        let block = BLOCKS.iter().find(|(short, _)| *short == head).map(|(_, name)| *name).or((head == "body").then_some(""));
        let Some(block) = block else { continue };
        let pointer = if block.is_empty() { format!("/{field}") } else { format!("/{block}/{field}") };
        let value = body.pointer(&pointer).cloned().unwrap_or(Value::Null);
        let shown = match value {
            Value::String(s) if s.len() > 80 => Value::String(format!("[{} characters]", s.len())),
            Value::Object(_) => Value::String("{…}".into()),
            v => v,
        };
        // `job.mpan.len()` reads job.mpan.
        out.insert(format!("{head}.{field}"), shown);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_follow_helper_calls() {
        let helpers = "// helpers\nfn outer(exec) {\n  if exec.a { inner(exec) } else { #{ x: 1 } }\n}\n\nfn inner(exec) { exec.b }\n";
        let bodies = function_bodies(helpers);
        assert_eq!(bodies.keys().collect::<Vec<_>>(), ["inner", "outer"]);
        assert!(bodies["outer"].contains("inner(exec)") && bodies["outer"].contains("#{ x: 1 }"), "{bodies:?}");
        assert_eq!(bodies["inner"].trim(), "exec.b");
        assert_eq!(called("outer(scenario, exec) && job.mpan.len() > 1 && present(x)"), ["outer", "present"]);
    }

    #[test]
    fn a_runaway_condition_is_stopped() {
        let limits = RhaiLimits { max_operations: 1_000_000_000, timeout_ms: 50, ..RhaiLimits::default() };
        let file = RulesFile {
            rules: vec![RuleDef { id: "spin".into(), level: Level::Error, pointer: "/x".into(), message: "m".into(), when: "loop {}".into(), note: None }],
            scenarios: vec![ScenarioDef { id: "S".into(), name: "s".into(), when: "true".into() }],
            ..RulesFile::default()
        };
        let rules = Rules::compile(vec![("t".into(), file)], vec![], &limits).unwrap();
        let body = serde_json::json!({});
        let mut ctx = Ctx::new(&body, "2025-01-01");
        assert!(!rules.rules[0].when.is_fast());
        let started = Instant::now();
        let err = rules.eval(&mut ctx, &rules.rules[0].when).unwrap_err();
        assert_eq!(err.to_string(), "stopped: ran past its deadline of 50 ms");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
