//! The fast path: conditions and template values evaluated in Rust, straight over the parsed
//! body, with rhai as the fallback.
//!
//! Every condition is still compiled by rhai (its AST is the authority, and the rhai fallback
//! runs it). The fast path compiles that same AST, after rhai's own parsing and optimisation,
//! into a small program for the common shapes: field access, indexing, comparisons, `in`, `&&`,
//! `||`, `!`, `+` on text and integers, `let`, `if`, `for` over ranges and arrays, `while`,
//! `return`, array and map literals, the helper functions registered in Rust, a few of rhai's
//! own (`len`, `type_of`, `parse_int`, `starts_with`, `sub_string`, `push`, `replace`) and the
//! script helpers of `rules/*.rhai` when their bodies fit the same shapes.
//!
//! Nothing here knows a particular rule: an expression of another shape simply has no fast
//! program. And the fast path never guesses: whenever a value is not one whose outcome it knows
//! to be rhai's (a type mismatch, a property of a non-map, an integer overflow, an error, more
//! operations than a fraction of the rhai limits allow), it gives up ([`Ctl::Bail`]) and the
//! condition runs in rhai as before, so the answer is rhai's in every case. A differential test
//! (`fast_path_agrees_with_rhai` below) checks both over every golden case, sample and thousands
//! of mutated bodies.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use rhai::{ASTFlags, Dynamic, Expr, FnCallExpr, Stmt, AST, INT};
use serde_json::Value;

use crate::config::RhaiLimits;
use crate::dtc::items::{address_lines, mpan_check_ok, postcode};
use crate::rules::body::{Distributor, BLOCKS, LONG_STRING};

/// A value as the fast path sees it: borrowed from the body or the program where it can be.
#[derive(Clone, Debug)]
pub(crate) enum V<'a> {
    Unit,
    Bool(bool),
    Int(INT),
    Float(f64),
    Str(Cow<'a, str>),
    /// An object or array of the body, read in place.
    Json(&'a Value),
    Arr(Vec<V<'a>>),
    Map(BTreeMap<String, V<'a>>),
    /// A value from rhai the fast path does not model: anything done with it gives up.
    Dyn(Dynamic),
}

/// Why an evaluation stopped early: a `return`, or the fast path gives up.
pub(crate) enum Ctl<'a> {
    Bail,
    Ret(V<'a>),
}

type R<'a, T> = Result<T, Ctl<'a>>;

const BAIL: Ctl<'static> = Ctl::Bail;

/// The variables a body is judged with: `body`, the blocks, `today`, and those pushed as the
/// decision goes (`scenario`, `sender`, `recipient`, `each`).
pub(crate) struct Env<'a> {
    pub body: &'a Value,
    pub today: &'a str,
    pub vars: Vec<(&'static str, V<'a>)>,
    /// Each block of [`BLOCKS`] (an empty object when absent or not an object), looked up once.
    blocks: [&'a Value; BLOCKS.len()],
}

impl<'a> Env<'a> {
    pub(crate) fn new(body: &'a Value, today: &'a str) -> Env<'a> {
        let blocks = BLOCKS.map(|(_, name)| match body.get(name) {
            Some(v @ Value::Object(_)) => v,
            _ => empty_object(),
        });
        Env { body, today, vars: Vec::new(), blocks }
    }

    fn named(&self, name: &str) -> Option<&V<'a>> {
        self.vars.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone)]
enum Global {
    Block(usize),
    Body,
    Today,
    Named(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
}

/// A function the fast path knows: the helpers registered in Rust and a few of rhai's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Native {
    MpanCheckOk,
    Distributor,
    LondonDate,
    Epoch,
    IsDate,
    AddressLines,
    AddressLine,
    Postcode,
    Clip,
    IsDigits,
    IsBlank,
    Present,
    IsTrue,
    IsFalse,
    Len,
    TypeOf,
    ParseInt,
    StartsWith,
    SubString,
}

fn native(name: &str, arity: usize) -> Option<Native> {
    use Native::*;
    Some(match (name, arity) {
        ("mpan_check_ok", 1) => MpanCheckOk,
        ("distributor", 1) => Distributor,
        ("london_date", 1) => LondonDate,
        ("epoch", 1) => Epoch,
        ("is_date", 1) => IsDate,
        ("address_lines", 1) => AddressLines,
        ("address_line", 3) => AddressLine,
        ("postcode", 1) => Postcode,
        ("clip", 2) => Clip,
        ("is_digits", 1) => IsDigits,
        ("is_blank", 1) => IsBlank,
        ("present", 1) => Present,
        ("is_true", 1) => IsTrue,
        ("is_false", 1) => IsFalse,
        ("len", 1) => Len,
        ("type_of", 1) => TypeOf,
        ("parse_int", 1) => ParseInt,
        ("starts_with", 2) => StartsWith,
        ("sub_string", 2) => SubString,
        _ => return None,
    })
}

/// Methods that change the variable they are called on.
#[derive(Debug, Clone, Copy)]
enum Mutator {
    Push,
    Replace,
}

#[derive(Debug)]
enum E {
    Unit,
    Bool(bool),
    Int(INT),
    Str(String),
    Local(usize),
    Global(Global),
    Prop(Box<E>, String),
    Index(Box<E>, Box<E>),
    And(Vec<E>),
    Or(Vec<E>),
    Not(Box<E>),
    Bin(Op, Box<E>, Box<E>),
    /// `item in container`: (container, item).
    Contains(Box<E>, Box<E>),
    Native(Native, Vec<E>),
    Call(usize, Vec<E>),
    Mutate(usize, Mutator, Vec<E>),
    Array(Vec<E>),
    Map(Vec<(String, E)>),
    Block(Vec<S>),
}

#[derive(Debug)]
enum Iter {
    Range(E, E, bool),
    Each(E),
}

#[derive(Debug)]
enum S {
    Let(usize, E),
    Expr(E),
    Assign(usize, E),
    If(E, Vec<S>, Vec<S>),
    For(usize, Iter, Vec<S>),
    While(E, Vec<S>),
    Return(E),
}

/// A condition's fast program.
#[derive(Debug)]
pub(crate) struct Prog {
    body: Vec<S>,
    slots: usize,
}

#[derive(Debug)]
struct FnDef {
    params: usize,
    slots: usize,
    body: Vec<S>,
}

/// The script helpers' fast programs and what evaluating needs besides the body.
pub(crate) struct Lib {
    fns: Vec<Option<FnDef>>,
    index: HashMap<(String, usize), usize>,
    distributors: Arc<BTreeMap<String, Distributor>>,
    max_ops: u64,
    max_depth: usize,
    max_string: usize,
    max_array: usize,
}

/// A place in a helpers file: line and column.
type Spot = (usize, usize);

/// The names a condition may read besides its own variables.
const NAMED: [&str; 4] = ["scenario", "sender", "recipient", "each"];

struct Compiler<'l> {
    lib: &'l Lib,
    /// Variables in scope: name, slot, constant.
    scope: Vec<(String, usize, bool)>,
    slots: usize,
    /// Inside a script function: no globals.
    in_fn: bool,
}

type C<T> = Option<T>;

impl Compiler<'_> {
    fn block(&mut self, stmts: &[Stmt]) -> C<Vec<S>> {
        let mark = self.scope.len();
        let out = stmts.iter().map(|s| self.stmt(s)).collect::<Option<Vec<_>>>();
        self.scope.truncate(mark);
        out
    }

    fn declare(&mut self, name: &str, constant: bool) -> usize {
        let slot = self.slots;
        self.slots += 1;
        self.scope.push((name.to_string(), slot, constant));
        slot
    }

    fn local(&self, name: &str) -> Option<(usize, bool)> {
        self.scope.iter().rev().find(|(n, ..)| n == name).map(|(_, s, c)| (*s, *c))
    }

    fn stmt(&mut self, s: &Stmt) -> C<S> {
        Some(match s {
            Stmt::Noop(..) => S::Expr(E::Unit),
            Stmt::Expr(e) => S::Expr(self.expr(e)?),
            Stmt::FnCall(f, ..) => S::Expr(self.call(f)?),
            Stmt::Block(b) => S::Expr(E::Block(self.block(b.statements())?)),
            Stmt::Var(x, flags, ..) => {
                if flags.contains(ASTFlags::EXPORTED) {
                    return None;
                }
                let value = self.expr(&x.1)?;
                S::Let(self.declare(&x.0.name, flags.contains(ASTFlags::CONSTANT)), value)
            }
            Stmt::Assignment(x) => {
                let (op, bin) = &**x;
                if op.is_op_assignment() {
                    return None;
                }
                let Expr::Variable(v, ..) = &bin.lhs else { return None };
                if !v.2.is_empty() {
                    return None;
                }
                let (slot, constant) = self.local(&v.1)?;
                if constant {
                    return None;
                }
                S::Assign(slot, self.expr(&bin.rhs)?)
            }
            Stmt::If(x, ..) => S::If(self.expr(&x.expr)?, self.block(x.body.statements())?, self.block(x.branch.statements())?),
            Stmt::While(x, ..) => {
                if matches!(x.expr, Expr::Unit(..)) {
                    return None;
                }
                S::While(self.expr(&x.expr)?, self.block(x.body.statements())?)
            }
            Stmt::For(x, ..) => {
                let (var, counter, flow) = &**x;
                if counter.is_some() {
                    return None;
                }
                let iter = self.iterable(&flow.expr)?;
                let mark = self.scope.len();
                let slot = self.declare(&var.name, false);
                let body = self.block(flow.body.statements());
                self.scope.truncate(mark);
                S::For(slot, iter, body?)
            }
            Stmt::Return(value, flags, ..) => {
                if !flags.is_empty() {
                    return None;
                }
                S::Return(value.as_deref().map(|e| self.expr(e)).unwrap_or(Some(E::Unit))?)
            }
            _ => return None,
        })
    }

    fn iterable(&mut self, e: &Expr) -> C<Iter> {
        match e {
            Expr::DynamicConstant(d, ..) => {
                if let Some(r) = d.clone().try_cast::<std::ops::RangeInclusive<INT>>() {
                    return Some(Iter::Range(E::Int(*r.start()), E::Int(*r.end()), true));
                }
                if let Some(r) = d.clone().try_cast::<std::ops::Range<INT>>() {
                    return Some(Iter::Range(E::Int(r.start), E::Int(r.end), false));
                }
                None
            }
            Expr::FnCall(f, ..) if f.namespace.is_empty() && f.args.len() == 2 && (f.name.as_str() == "..=" || f.name.as_str() == "..") => {
                Some(Iter::Range(self.expr(&f.args[0])?, self.expr(&f.args[1])?, f.name.as_str() == "..="))
            }
            e => Some(Iter::Each(self.expr(e)?)),
        }
    }

    fn expr(&mut self, e: &Expr) -> C<E> {
        Some(match e {
            Expr::Unit(..) => E::Unit,
            Expr::BoolConstant(b, ..) => E::Bool(*b),
            Expr::IntegerConstant(i, ..) => E::Int(*i),
            Expr::StringConstant(s, ..) => E::Str(s.to_string()),
            Expr::DynamicConstant(d, ..) => constant(d)?,
            Expr::Array(items, ..) => E::Array(items.iter().map(|i| self.expr(i)).collect::<Option<_>>()?),
            Expr::Map(x, ..) => E::Map(x.0.iter().map(|(k, v)| Some((k.name.to_string(), self.expr(v)?))).collect::<Option<_>>()?),
            Expr::Variable(v, ..) => {
                if !v.2.is_empty() {
                    return None;
                }
                if let Some((slot, _)) = self.local(&v.1) {
                    return Some(E::Local(slot));
                }
                if self.in_fn {
                    return None;
                }
                let name = v.1.as_str();
                if let Some(i) = BLOCKS.iter().position(|(short, _)| *short == name) {
                    E::Global(Global::Block(i))
                } else if name == "body" {
                    E::Global(Global::Body)
                } else if name == "today" {
                    E::Global(Global::Today)
                } else if NAMED.contains(&name) {
                    E::Global(Global::Named(name.to_string()))
                } else {
                    return None;
                }
            }
            Expr::Stmt(b) => E::Block(self.block(b.statements())?),
            Expr::FnCall(f, ..) => self.call(f)?,
            Expr::And(x, ..) => E::And(x.iter().map(|i| self.expr(i)).collect::<Option<_>>()?),
            Expr::Or(x, ..) => E::Or(x.iter().map(|i| self.expr(i)).collect::<Option<_>>()?),
            Expr::Dot(x, flags, ..) => {
                if flags.contains(ASTFlags::NEGATED) {
                    return None;
                }
                // `local.push(x)`, `local.replace(a, b)`: methods that change the variable.
                if let (Expr::Variable(v, ..), Expr::MethodCall(f, ..)) = (&x.lhs, &x.rhs) {
                    let mutator = match (f.name.as_str(), f.args.len()) {
                        ("push", 1) => Some(Mutator::Push),
                        ("replace", 2) => Some(Mutator::Replace),
                        _ => None,
                    };
                    if let Some(m) = mutator {
                        let (slot, constant) = self.local(&v.1)?;
                        if constant || !v.2.is_empty() {
                            return None;
                        }
                        return Some(E::Mutate(slot, m, f.args.iter().map(|a| self.expr(a)).collect::<Option<_>>()?));
                    }
                }
                let obj = self.expr(&x.lhs)?;
                self.chain(obj, &x.rhs)?
            }
            Expr::Index(x, ..) => {
                if matches!(x.rhs, Expr::Dot(..) | Expr::Index(..)) {
                    return None;
                }
                E::Index(Box::new(self.expr(&x.lhs)?), Box::new(self.expr(&x.rhs)?))
            }
            _ => return None,
        })
    }

    /// `obj` followed by the rest of a dot chain.
    fn chain(&mut self, obj: E, rhs: &Expr) -> C<E> {
        Some(match rhs {
            Expr::Property(p, ..) => E::Prop(Box::new(obj), p.2.to_string()),
            Expr::MethodCall(f, ..) => {
                if !f.namespace.is_empty() || matches!(f.name.as_str(), "push" | "replace") {
                    return None;
                }
                let n = native(&f.name, f.args.len() + 1)?;
                if self.lib.index.contains_key(&(f.name.to_string(), f.args.len() + 1)) {
                    return None;
                }
                let mut args = vec![obj];
                for a in &f.args {
                    args.push(self.expr(a)?);
                }
                E::Native(n, args)
            }
            Expr::Dot(x, flags, ..) => {
                if flags.contains(ASTFlags::NEGATED) || !matches!(x.lhs, Expr::Property(..) | Expr::MethodCall(..)) {
                    return None;
                }
                let inner = self.chain(obj, &x.lhs)?;
                self.chain(inner, &x.rhs)?
            }
            _ => return None,
        })
    }

    fn call(&mut self, f: &FnCallExpr) -> C<E> {
        if !f.namespace.is_empty() || f.capture_parent_scope {
            return None;
        }
        let arity = f.args.len();
        if f.name.as_str() == "contains" && arity == 2 {
            // `a in b` is `contains(b, a)`.
            if self.lib.index.contains_key(&("contains".to_string(), 2)) {
                return None;
            }
            return Some(E::Contains(Box::new(self.expr(&f.args[0])?), Box::new(self.expr(&f.args[1])?)));
        }
        let args = || f.args.iter();
        let mut arg = |i: usize| -> C<Box<E>> { Some(Box::new(self.expr(&f.args[i])?)) };
        // Operators (no script or registered function can take these names).
        let op = match (f.name.as_str(), arity) {
            ("!", 1) => return Some(E::Not(arg(0)?)),
            ("==", 2) => Some(Op::Eq),
            ("!=", 2) => Some(Op::Ne),
            ("<", 2) => Some(Op::Lt),
            ("<=", 2) => Some(Op::Le),
            (">", 2) => Some(Op::Gt),
            (">=", 2) => Some(Op::Ge),
            ("+", 2) => Some(Op::Add),
            _ if f.op_token.is_some() => return None,
            _ => None,
        };
        if let Some(op) = op {
            return Some(E::Bin(op, arg(0)?, arg(1)?));
        }
        let script = self.lib.index.get(&(f.name.to_string(), arity)).copied();
        let compiled = args().map(|a| self.expr(a)).collect::<Option<Vec<_>>>()?;
        match (script, native(&f.name, arity)) {
            // While the helpers themselves compile, `fns` is still empty: a call to a helper
            // without a fast program gives up when it runs.
            (Some(i), None) if i != usize::MAX && (self.lib.fns.is_empty() || self.lib.fns[i].is_some()) => Some(E::Call(i, compiled)),
            (None, Some(n)) => Some(E::Native(n, compiled)),
            _ => None,
        }
    }
}

fn constant(d: &Dynamic) -> C<E> {
    if d.is_unit() {
        return Some(E::Unit);
    }
    if let Ok(b) = d.as_bool() {
        return Some(E::Bool(b));
    }
    if let Ok(i) = d.as_int() {
        return Some(E::Int(i));
    }
    if d.is_string() {
        return Some(E::Str(d.clone().into_string().ok()?));
    }
    if d.is_array() {
        let a = d.clone().into_array().ok()?;
        return Some(E::Array(a.iter().map(constant).collect::<Option<_>>()?));
    }
    None
}

impl Lib {
    /// Compiles the script helpers (those of another shape get no fast program).
    pub(crate) fn new(helpers: &[AST], distributors: Arc<BTreeMap<String, Distributor>>, limits: &RhaiLimits) -> Lib {
        let mut lib = Lib {
            fns: Vec::new(),
            index: HashMap::new(),
            distributors,
            // Well inside rhai's own limits: where rhai might stop, the fast path has given up.
            max_ops: limits.max_operations / 8,
            max_depth: limits.max_call_levels / 2,
            max_string: limits.max_string_size / 2,
            max_array: limits.max_array_size / 2,
        };
        let defs: Vec<_> = helpers.iter().flat_map(|a| a.iter_fn_def()).collect();
        let mut twice = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            if lib.index.insert((d.name.to_string(), d.params.len()), i).is_some() {
                twice.push((d.name.to_string(), d.params.len()));
            }
        }
        // Two files defining the same function: which one rhai calls is its business.
        for k in twice {
            lib.index.insert(k, usize::MAX);
        }
        // A function's body is reached through `AST::walk` (its type is not nameable outside
        // rhai): the top-level statements of each body, told apart by where they stand in the
        // file. Anything that does not map cleanly leaves the functions of that file slow.
        let mut fns: Vec<Option<FnDef>> = Vec::new();
        for ast in helpers {
            let here: Vec<_> = ast.iter_fn_def().collect();
            let at = |p: rhai::Position| Some((p.line()?, p.position()?));
            let ranges: Vec<Option<(Spot, Spot)>> = here.iter().map(|d| Some((at(d.body.start_position())?, at(d.body.end_position())?))).collect();
            let nested = |k: usize| {
                let Some((s, e)) = ranges[k] else { return true };
                ranges.iter().enumerate().any(|(j, r)| j != k && r.is_none_or(|(s2, e2)| s2 <= e && s <= e2))
            };
            let mut bodies: Vec<Option<Vec<S>>> = (0..here.len()).map(|k| (!nested(k) && here[k].this_type.is_none()).then(Vec::new)).collect();
            let mut compilers: Vec<Compiler> = here
                .iter()
                .map(|d| {
                    let mut c = Compiler { lib: &lib, scope: Vec::new(), slots: 0, in_fn: true };
                    for p in &d.params {
                        c.declare(p, false);
                    }
                    c
                })
                .collect();
            let mut main = ast.statements().len();
            let mut lost = false;
            ast.walk(&mut |path: &[rhai::ASTNode]| {
                let [rhai::ASTNode::Stmt(stmt)] = path else { return true };
                if main > 0 {
                    main -= 1;
                    return true;
                }
                let p = at(stmt.position());
                let owner = ranges.iter().position(|r| matches!((r, p), (Some((s, e)), Some(p)) if *s < p && p < *e));
                match owner {
                    None => lost = true,
                    Some(k) => {
                        if bodies[k].is_some() {
                            match compilers[k].stmt(stmt) {
                                Some(x) => {
                                    if let Some(b) = bodies[k].as_mut() {
                                        b.push(x);
                                    }
                                }
                                None => bodies[k] = None,
                            }
                        }
                    }
                }
                true
            });
            for (k, d) in here.iter().enumerate() {
                let body = if lost { None } else { bodies[k].take() };
                fns.push(body.map(|body| FnDef { params: d.params.len(), slots: compilers[k].slots, body }));
            }
        }
        lib.fns = fns;
        lib
    }

    /// The fast program of a condition, if it has the shapes the fast path knows.
    pub(crate) fn compile(&self, ast: &AST) -> Option<Prog> {
        if ast.iter_fn_def().next().is_some() {
            return None;
        }
        let mut c = Compiler { lib: self, scope: Vec::new(), slots: 0, in_fn: false };
        let body = c.block(ast.statements())?;
        Some(Prog { body, slots: c.slots })
    }

    /// Runs a fast program; `None` when the fast path gives up (rhai then decides).
    pub(crate) fn run<'a>(&'a self, prog: &'a Prog, env: &Env<'a>) -> Option<V<'a>> {
        let mut m = Machine { lib: self, env, ops: 0, depth: 0 };
        let mut locals = vec![V::Unit; prog.slots];
        match m.block(&prog.body, &mut locals) {
            Ok(v) | Err(Ctl::Ret(v)) => Some(v),
            Err(Ctl::Bail) => None,
        }
    }
}

struct Machine<'a, 'e> {
    lib: &'a Lib,
    env: &'e Env<'a>,
    ops: u64,
    depth: usize,
}

fn empty_object() -> &'static Value {
    static EMPTY: OnceLock<Value> = OnceLock::new();
    EMPTY.get_or_init(|| Value::Object(serde_json::Map::new()))
}

/// A body value as rules see it (as [`crate::rules::body::to_dynamic`] gives it).
pub(crate) fn read(v: &Value) -> V<'_> {
    match v {
        Value::Null => V::Unit,
        Value::Bool(b) => V::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => V::Int(i as INT),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => V::Int(f as INT),
            (None, f) => V::Float(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) if s.len() > LONG_STRING => V::Str(Cow::Owned(format!("[{} bytes not shown to rules]", s.len()))),
        Value::String(s) => V::Str(Cow::Borrowed(s)),
        Value::Array(_) | Value::Object(_) => V::Json(v),
    }
}

fn text<'v>(v: &'v V<'_>) -> Option<&'v str> {
    match v {
        V::Str(s) => Some(s),
        _ => None,
    }
}

fn int<'a>(v: &V<'_>) -> R<'a, INT> {
    match v {
        V::Int(i) => Ok(*i),
        _ => Err(BAIL),
    }
}

/// `==` as rhai gives it, or `None` where the fast path does not know.
fn equal(a: &V, b: &V) -> Option<bool> {
    Some(match (a, b) {
        (V::Unit, V::Unit) => true,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::Int(x), V::Int(y)) => x == y,
        (V::Str(x), V::Str(y)) => x == y,
        (V::Unit | V::Bool(_) | V::Str(_), V::Unit | V::Bool(_) | V::Str(_) | V::Int(_)) | (V::Int(_), V::Unit | V::Bool(_) | V::Str(_)) => false,
        _ => return None,
    })
}

/// `<` `<=` `>` `>=` as rhai gives them.
fn compare(op: Op, a: &V, b: &V) -> Option<bool> {
    use std::cmp::Ordering::*;
    let ord = match (a, b) {
        (V::Int(x), V::Int(y)) => x.cmp(y),
        (V::Str(x), V::Str(y)) => x.as_ref().cmp(y.as_ref()),
        (V::Unit, V::Unit) => return Some(false),
        (V::Unit | V::Bool(_) | V::Str(_), V::Unit | V::Bool(_) | V::Str(_) | V::Int(_)) | (V::Int(_), V::Unit | V::Bool(_) | V::Str(_)) => {
            if matches!((a, b), (V::Bool(_), V::Bool(_))) {
                return None;
            }
            return Some(false);
        }
        _ => return None,
    };
    Some(match op {
        Op::Lt => ord == Less,
        Op::Le => ord != Greater,
        Op::Gt => ord == Greater,
        Op::Ge => ord != Less,
        _ => return None,
    })
}

impl<'a> Machine<'a, '_> {
    fn tick(&mut self) -> R<'a, ()> {
        self.ops += 1;
        if self.ops > self.lib.max_ops {
            return Err(BAIL);
        }
        Ok(())
    }

    fn block(&mut self, stmts: &'a [S], locals: &mut Vec<V<'a>>) -> R<'a, V<'a>> {
        let mut last = V::Unit;
        for s in stmts {
            last = self.stmt(s, locals)?;
        }
        Ok(last)
    }

    fn truth(&mut self, e: &'a E, locals: &mut Vec<V<'a>>) -> R<'a, bool> {
        match self.expr(e, locals)? {
            V::Bool(b) => Ok(b),
            _ => Err(BAIL),
        }
    }

    fn stmt(&mut self, s: &'a S, locals: &mut Vec<V<'a>>) -> R<'a, V<'a>> {
        self.tick()?;
        Ok(match s {
            S::Expr(e) => self.expr(e, locals)?,
            S::Let(slot, e) | S::Assign(slot, e) => {
                locals[*slot] = self.expr(e, locals)?;
                V::Unit
            }
            S::If(c, then, other) => {
                if self.truth(c, locals)? {
                    self.block(then, locals)?
                } else {
                    self.block(other, locals)?
                }
            }
            S::While(c, body) => {
                while self.truth(c, locals)? {
                    self.block(body, locals)?;
                }
                V::Unit
            }
            S::For(slot, Iter::Range(from, to, inclusive), body) => {
                let from = int(&self.expr(from, locals)?)?;
                let to = int(&self.expr(to, locals)?)?;
                let to = if *inclusive { to.checked_add(1).ok_or(BAIL)? } else { to };
                let mut i = from;
                while i < to {
                    self.tick()?;
                    locals[*slot] = V::Int(i);
                    self.block(body, locals)?;
                    i += 1;
                }
                V::Unit
            }
            S::For(slot, Iter::Each(e), body) => {
                let items: Vec<V<'a>> = match self.expr(e, locals)? {
                    V::Arr(a) => a,
                    V::Json(Value::Array(a)) => a.iter().map(read).collect(),
                    _ => return Err(BAIL),
                };
                for item in items {
                    self.tick()?;
                    locals[*slot] = item;
                    self.block(body, locals)?;
                }
                V::Unit
            }
            S::Return(e) => return Err(Ctl::Ret(self.expr(e, locals)?)),
        })
    }

    fn global(&self, g: &Global) -> R<'a, V<'a>> {
        let body: &'a Value = self.env.body;
        Ok(match g {
            Global::Block(i) => V::Json(self.env.blocks[*i]),
            Global::Body => V::Json(body),
            Global::Today => V::Str(Cow::Borrowed(self.env.today)),
            Global::Named(n) => self.env.named(n).cloned().ok_or(BAIL)?,
        })
    }

    fn expr(&mut self, e: &'a E, locals: &mut Vec<V<'a>>) -> R<'a, V<'a>> {
        self.tick()?;
        Ok(match e {
            E::Unit => V::Unit,
            E::Bool(b) => V::Bool(*b),
            E::Int(i) => V::Int(*i),
            E::Str(s) => V::Str(Cow::Borrowed(s)),
            E::Local(slot) => locals[*slot].clone(),
            E::Global(g) => self.global(g)?,
            E::Prop(obj, name) => {
                let obj = self.expr(obj, locals)?;
                field(obj, name)?
            }
            E::Index(obj, idx) => {
                let obj = self.expr(obj, locals)?;
                match self.expr(idx, locals)? {
                    V::Str(k) => field(obj, &k)?,
                    V::Int(i) => {
                        let i = usize::try_from(i).map_err(|_| BAIL)?;
                        match obj {
                            V::Json(Value::Array(a)) => read(a.get(i).ok_or(BAIL)?),
                            V::Arr(mut a) if i < a.len() => a.swap_remove(i),
                            _ => return Err(BAIL),
                        }
                    }
                    _ => return Err(BAIL),
                }
            }
            E::And(items) => {
                for i in items {
                    if !self.truth(i, locals)? {
                        return Ok(V::Bool(false));
                    }
                }
                V::Bool(true)
            }
            E::Or(items) => {
                for i in items {
                    if self.truth(i, locals)? {
                        return Ok(V::Bool(true));
                    }
                }
                V::Bool(false)
            }
            E::Not(x) => V::Bool(!self.truth(x, locals)?),
            E::Bin(op, a, b) => {
                let a = self.expr(a, locals)?;
                let b = self.expr(b, locals)?;
                match op {
                    Op::Eq => V::Bool(equal(&a, &b).ok_or(BAIL)?),
                    Op::Ne => V::Bool(!equal(&a, &b).ok_or(BAIL)?),
                    Op::Add => self.add(a, b)?,
                    op => V::Bool(compare(*op, &a, &b).ok_or(BAIL)?),
                }
            }
            E::Contains(container, item) => {
                let container = self.expr(container, locals)?;
                let item = self.expr(item, locals)?;
                V::Bool(match (&container, &item) {
                    (V::Json(Value::Object(o)), V::Str(k)) => o.contains_key(k.as_ref()),
                    (V::Map(m), V::Str(k)) => m.contains_key(k.as_ref()),
                    (V::Str(s), V::Str(k)) => s.contains(k.as_ref()),
                    (V::Arr(a), item) => {
                        let mut found = false;
                        for x in a {
                            if equal(x, item).ok_or(BAIL)? {
                                found = true;
                                break;
                            }
                        }
                        found
                    }
                    _ => return Err(BAIL),
                })
            }
            E::Native(n, args) => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(self.expr(a, locals)?);
                }
                self.native(*n, values)?
            }
            E::Call(i, args) => {
                let f = self.lib.fns.get(*i).and_then(Option::as_ref).ok_or(BAIL)?;
                let mut frame = vec![V::Unit; f.slots];
                for (k, a) in args.iter().enumerate() {
                    frame[k] = self.expr(a, locals)?;
                }
                debug_assert_eq!(args.len(), f.params);
                self.depth += 1;
                if self.depth > self.lib.max_depth {
                    return Err(BAIL);
                }
                let result = match self.block(&f.body, &mut frame) {
                    Ok(v) | Err(Ctl::Ret(v)) => v,
                    Err(Ctl::Bail) => return Err(BAIL),
                };
                self.depth -= 1;
                result
            }
            E::Mutate(slot, m, args) => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(self.expr(a, locals)?);
                }
                match (m, &mut locals[*slot], values.as_slice()) {
                    (Mutator::Push, V::Arr(a), [x]) => {
                        if a.len() + 1 > self.lib.max_array {
                            return Err(BAIL);
                        }
                        a.push(x.clone());
                    }
                    (Mutator::Replace, V::Str(s), [V::Str(find), V::Str(with)]) => {
                        let replaced = s.replace(find.as_ref(), with);
                        if replaced.len() > self.lib.max_string {
                            return Err(BAIL);
                        }
                        *s = Cow::Owned(replaced);
                    }
                    _ => return Err(BAIL),
                }
                V::Unit
            }
            E::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(self.expr(i, locals)?);
                }
                V::Arr(out)
            }
            E::Map(items) => {
                let mut out = BTreeMap::new();
                for (k, v) in items {
                    out.insert(k.clone(), self.expr(v, locals)?);
                }
                V::Map(out)
            }
            E::Block(stmts) => self.block(stmts, locals)?,
        })
    }

    fn add(&self, a: V<'a>, b: V<'a>) -> R<'a, V<'a>> {
        let joined = match (a, b) {
            (V::Int(x), V::Int(y)) => return x.checked_add(y).map(V::Int).ok_or(BAIL),
            (V::Str(x), V::Str(y)) => format!("{x}{y}"),
            (V::Str(x), V::Int(y)) => format!("{x}{y}"),
            (V::Int(x), V::Str(y)) => format!("{x}{y}"),
            (V::Unit, V::Str(y)) => return Ok(V::Str(y)),
            (V::Str(x), V::Unit) => return Ok(V::Str(x)),
            _ => return Err(BAIL),
        };
        if joined.len() > self.lib.max_string {
            return Err(BAIL);
        }
        Ok(V::Str(Cow::Owned(joined)))
    }

    fn native(&self, n: Native, mut args: Vec<V<'a>>) -> R<'a, V<'a>> {
        use crate::domain::clock;
        let s = |i: usize| -> Option<&str> { args.get(i).and_then(text) };
        Ok(match n {
            Native::MpanCheckOk => V::Bool(s(0).is_some_and(mpan_check_ok)),
            Native::Distributor => {
                let d = s(0).and_then(|m| m.get(..2)).and_then(|id| self.lib.distributors.get(id));
                match d {
                    None => V::Unit,
                    Some(d) => {
                        let mut m = BTreeMap::new();
                        m.insert("id".to_string(), V::Str(Cow::Owned(d.id.clone())));
                        m.insert("name".to_string(), V::Str(Cow::Owned(d.name.clone())));
                        m.insert("mpid".to_string(), V::Str(Cow::Owned(d.mpid.clone())));
                        m.insert("kind".to_string(), V::Str(Cow::Owned(d.kind.clone())));
                        V::Map(m)
                    }
                }
            }
            Native::LondonDate => s(0).and_then(clock::parse_rfc3339).map(|t| V::Str(Cow::Owned(clock::iso_date(clock::london(t).date())))).unwrap_or(V::Unit),
            Native::Epoch => s(0).and_then(clock::parse_rfc3339).map(|t| V::Int(t.unix_timestamp() as INT)).unwrap_or(V::Unit),
            Native::IsDate => V::Bool(s(0).is_some_and(|x| clock::parse_date(x).is_some())),
            Native::AddressLines => V::Arr(s(0).map(|x| address_lines(x).into_iter().map(|l| V::Str(Cow::Owned(l))).collect()).unwrap_or_default()),
            Native::AddressLine => {
                let k = int(&args[2])?;
                let mut lines = s(0).map(address_lines).unwrap_or_default();
                lines.extend(s(1).map(str::to_string));
                usize::try_from(k).ok().and_then(|k| lines.into_iter().nth(k)).map(|l| V::Str(Cow::Owned(l))).unwrap_or(V::Unit)
            }
            Native::Postcode => s(0).map(|x| V::Str(Cow::Owned(postcode(x)))).unwrap_or(V::Unit),
            Native::Clip => {
                let n = int(&args[1])?;
                s(0).map(|x| V::Str(Cow::Owned(x.chars().take(usize::try_from(n).unwrap_or(0)).collect()))).unwrap_or(V::Unit)
            }
            Native::IsDigits => V::Bool(s(0).is_some_and(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))),
            Native::IsBlank => V::Bool(s(0).is_none_or(|x| x.trim().is_empty())),
            Native::Present => V::Bool(!matches!(args[0], V::Unit)),
            Native::IsTrue => V::Bool(matches!(args[0], V::Bool(true))),
            Native::IsFalse => V::Bool(matches!(args[0], V::Bool(false))),
            Native::Len => V::Int(match &args[0] {
                V::Str(x) => x.chars().count() as INT,
                V::Arr(a) => a.len() as INT,
                V::Map(m) => m.len() as INT,
                V::Json(Value::Array(a)) => a.len() as INT,
                V::Json(Value::Object(o)) => o.len() as INT,
                _ => return Err(BAIL),
            }),
            Native::TypeOf => V::Str(Cow::Borrowed(match &args[0] {
                V::Unit => "()",
                V::Bool(_) => "bool",
                V::Int(_) => "i64",
                V::Float(_) => "f64",
                V::Str(_) => "string",
                V::Arr(_) | V::Json(Value::Array(_)) => "array",
                V::Map(_) | V::Json(_) => "map",
                V::Dyn(_) => return Err(BAIL),
            })),
            Native::ParseInt => {
                let x = s(0).ok_or(BAIL)?;
                if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(BAIL);
                }
                V::Int(x.parse::<INT>().map_err(|_| BAIL)?)
            }
            Native::StartsWith => match (s(0), s(1)) {
                (Some(x), Some(p)) => V::Bool(x.starts_with(p)),
                _ => return Err(BAIL),
            },
            Native::SubString => {
                let start = usize::try_from(int(&args[1])?).map_err(|_| BAIL)?;
                let V::Str(x) = args.swap_remove(0) else { return Err(BAIL) };
                V::Str(Cow::Owned(x.chars().skip(start).collect()))
            }
        })
    }
}

/// `obj.name` or `obj["name"]`: () for a key the map lacks, as rhai gives it.
fn field<'a>(obj: V<'a>, name: &str) -> R<'a, V<'a>> {
    match obj {
        V::Json(Value::Object(o)) => Ok(o.get(name).map(read).unwrap_or(V::Unit)),
        V::Map(mut m) => Ok(m.remove(name).unwrap_or(V::Unit)),
        _ => Err(BAIL),
    }
}

impl V<'_> {
    /// The value as rhai holds it.
    pub(crate) fn to_dynamic(&self) -> Dynamic {
        match self {
            V::Unit => Dynamic::UNIT,
            V::Bool(b) => (*b).into(),
            V::Int(i) => (*i).into(),
            V::Float(f) => (*f).into(),
            V::Str(s) => s.as_ref().into(),
            V::Json(v) => crate::rules::body::to_dynamic(v),
            V::Arr(a) => Dynamic::from_array(a.iter().map(V::to_dynamic).collect()),
            V::Map(m) => Dynamic::from_map(m.iter().map(|(k, v)| (k.as_str().into(), v.to_dynamic())).collect()),
            V::Dyn(d) => d.clone(),
        }
    }

    /// A value from rhai (a `repeat` that ran there): the shapes the fast path models, else opaque.
    pub(crate) fn from_dynamic(d: Dynamic) -> V<'static> {
        if d.is_unit() {
            return V::Unit;
        }
        if let Ok(b) = d.as_bool() {
            return V::Bool(b);
        }
        if let Ok(i) = d.as_int() {
            return V::Int(i);
        }
        if d.is_string() {
            return V::Str(Cow::Owned(d.into_string().unwrap_or_default()));
        }
        V::Dyn(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::engine::{Condition, Ctx, Rules};
    use crate::rules::set::RuleSet;

    fn rule_set() -> RuleSet {
        let config = crate::config::Config { rules_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), ..Default::default() };
        crate::rules::load::load(&config).unwrap()
    }

    /// Every request body of the golden cases, the samples and the benchmark.
    fn bodies() -> Vec<Value> {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut paths: Vec<_> =
            ["tests/cases", "rules/samples"].iter().flat_map(|d| crate::rules::samples::cases(&root.join(d))).map(|c| c.join("request.json")).collect();
        paths.push(root.join("tests/bench/s01-reference.json"));
        paths.iter().filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok()).filter(Value::is_object).collect()
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
            xs[(self.next() % xs.len() as u64) as usize].clone()
        }
    }

    /// Values a field may be set to: every type, the words the rules compare with, edge cases.
    fn palette() -> Vec<Value> {
        use serde_json::json;
        let mut out = vec![
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(1),
            json!(5),
            json!(-3),
            json!(2.5),
            json!(7.0),
            json!(9_223_372_036_854_775_807_i64),
            json!(18_446_744_073_709_551_615_u64),
            json!(""),
            json!(" "),
            json!("No"),
            json!("Yes"),
            json!("Completed"),
            json!("Aborted"),
            json!("01"),
            json!("02"),
            json!("09"),
            json!("10"),
            json!("99999999999999999999"),
            json!("0000000123456789"),
            json!("123456789"),
            json!("1129383838383"),
            json!("1129383838384"),
            json!("9929383838383"),
            json!("2025-01-08"),
            json!("2099-01-01"),
            json!("2025-13-40"),
            json!("2025-01-08T12:05:00.000Z"),
            json!("2025-06-30T23:30:00Z"),
            json!("2025-01-08T13:40:00+01:00"),
            json!("A"),
            json!("B01"),
            json!("+44 7737 374773 99"),
            json!("Flat 1, 25 Spear Building, High Street, a, b, c, d, e, f, g, h"),
            json!("é ü, ñ"),
            // Fewer characters than bytes, either side of the limits the rules count to.
            json!("ééééééééé"),
            json!("0ééé"),
            json!([]),
            json!(["x", 1]),
            json!({}),
            json!({"a": 1}),
        ];
        out.push(Value::String("A".repeat(LONG_STRING + 1)));
        out
    }

    /// The body with a few fields changed, removed or added, or a block removed or replaced.
    fn mutate(rng: &mut Rng, base: &Value, fields: &[(String, String)], palette: &[Value]) -> Value {
        let mut v = base.clone();
        for _ in 0..1 + rng.next() % 3 {
            let (block, field) = rng.pick(fields);
            let Some(obj) = v.as_object_mut() else { break };
            match rng.next() % 20 {
                0 => {
                    obj.remove(&block);
                }
                1 => {
                    obj.insert(block, rng.pick(palette));
                }
                2 => {
                    if let Some(Value::Object(b)) = obj.get_mut(&block) {
                        b.remove(&field);
                    }
                }
                _ => {
                    let value = rng.pick(palette);
                    match obj.get_mut(&block) {
                        Some(Value::Object(b)) => {
                            b.insert(field, value);
                        }
                        _ => {
                            obj.insert(block, serde_json::json!({ field: value }));
                        }
                    }
                }
            }
        }
        v
    }

    #[derive(Default, Debug)]
    struct Tally {
        fast: u64,
        gave_up: u64,
        slow: u64,
        mismatches: Vec<String>,
    }

    fn check(rules: &Rules, ctx: &mut Ctx<'_>, cond: &Condition, tally: &mut Tally) {
        let (fast, rhai) = rules.both(ctx, cond);
        match (fast, rhai) {
            (None, _) if cond.is_fast() => tally.gave_up += 1,
            (None, _) => tally.slow += 1,
            (Some(f), Ok(r)) if f.type_name() == r.type_name() && format!("{f:?}") == format!("{r:?}") => tally.fast += 1,
            (Some(f), r) => {
                if tally.mismatches.len() < 20 {
                    tally.mismatches.push(format!("{:?}: fast {} {f:?}, rhai {r:?}", cond.source, f.type_name()));
                }
            }
        }
    }

    /// Every condition of the rule set and every template expression, over every golden case,
    /// sample and the benchmark body, and over mutated copies of them: wherever the fast path
    /// answers, its answer is rhai's (same type, same value); where rhai fails, it gives up.
    #[test]
    fn fast_path_agrees_with_rhai() {
        let set = rule_set();
        let rules = &set.rules;
        let base = bodies();
        let mut fields: Vec<(String, String)> = Vec::new();
        for b in &base {
            for (block, v) in b.as_object().into_iter().flatten() {
                for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !fields.contains(&(block.clone(), k.clone())) {
                        fields.push((block.clone(), k.clone()));
                    }
                }
            }
        }
        let palette = palette();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut all = base.clone();
        for _ in 0..1500 {
            let b = rng.pick(&base);
            all.push(mutate(&mut rng, &b, &fields, &palette));
        }
        let mut tally = Tally::default();
        let scenarios: Vec<V> = [V::Unit].into_iter().chain(rules.scenarios.iter().map(|s| V::Str(Cow::Borrowed(s.id.as_str())))).collect();
        for (n, body) in all.iter().enumerate() {
            let mut ctx = Ctx::new(body, "2025-12-31");
            for s in &rules.scenarios {
                check(rules, &mut ctx, &s.when, &mut tally);
            }
            // Rules and flow choices under two scenarios each (all of them over the bodies as
            // written), templates under one.
            let k = n % scenarios.len();
            let chosen: Vec<&V> = if n < base.len() { scenarios.iter().collect() } else { vec![&scenarios[k], &scenarios[(k + 3) % scenarios.len()]] };
            for scenario in chosen {
                let mark = ctx.mark();
                ctx.push("scenario", scenario.clone());
                for r in &rules.rules {
                    check(rules, &mut ctx, &r.when, &mut tally);
                }
                ctx.push("sender", V::Str(Cow::Borrowed("DEMO")));
                for f in &rules.flows {
                    check(rules, &mut ctx, &f.when, &mut tally);
                }
                for r in rules.recipients.values() {
                    check(rules, &mut ctx, &r.mpid, &mut tally);
                }
                ctx.rewind(mark);
            }
            let mark = ctx.mark();
            ctx.push("scenario", scenarios[(n % (scenarios.len() - 1)) + 1].clone());
            ctx.push("sender", V::Str(Cow::Borrowed("DEMO")));
            ctx.push("recipient", V::Str(Cow::Borrowed("TEST")));
            let mut names: Vec<_> = set.templates.keys().collect();
            names.sort();
            for name in names {
                set.templates[name].each_condition(rules, &mut ctx, &mut |ctx, c| check(rules, ctx, c, &mut tally));
            }
            ctx.rewind(mark);
        }
        eprintln!("{} bodies ({} as written): {tally:?}", all.len(), base.len());
        assert!(tally.mismatches.is_empty(), "the fast path and rhai disagree: {:#?}", tally.mismatches);
        // The fast path must carry the bulk of the work, or it is not the fast path.
        assert!(tally.fast > 10 * (tally.gave_up + tally.slow), "{tally:?}");
    }

    /// The reference body is decided without a single rhai evaluation: every condition on its
    /// path has a fast program that answers.
    #[test]
    fn the_reference_body_needs_no_rhai() {
        let set = rule_set();
        let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/s01-reference.json")).unwrap();
        let client = crate::domain::auth::Client {
            name: "t".into(),
            sip_id: "DEMO".into(),
            key_id: "t".into(),
            key_sha256: String::new(),
            rate: Default::default(),
            revoked: false,
        };
        let now = crate::domain::clock::Clock::Fixed(crate::domain::clock::parse_rfc3339("2025-12-31T12:00:00Z").unwrap());
        let before = crate::rules::engine::rhai_runs();
        let d = crate::rules::decide::decide(&set, &client, &body, now, crate::rules::decide::Explain::No);
        assert!(matches!(d.verdict, crate::rules::decide::Verdict::Accepted(_)), "{:?}", d.verdict);
        assert_eq!(crate::rules::engine::rhai_runs() - before, 0);
        let slow: Vec<&str> = set
            .rules
            .rules
            .iter()
            .map(|r| &r.when)
            .chain(set.rules.scenarios.iter().map(|s| &s.when))
            .chain(set.rules.flows.iter().map(|f| &f.when))
            .filter(|c| !c.is_fast())
            .map(|c| c.source.as_str())
            .collect();
        assert!(slow.is_empty(), "conditions without a fast program: {slow:#?}");
    }
}
