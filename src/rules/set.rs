//! The rule set: schemas, rules and flow templates that decide a request, immutable once built.
//!
//! [`crate::rules::load`] builds it. `load` is the one loader behind every verb (`serve`, `check`, `test`). A candidate set is
//! built from the files, compiled, checked against the catalogue, and run over the sample bodies
//! in `rules/samples/` (an empty or half-written file compiles cleanly, so compiling is not
//! enough). Each sample must get its whole expected answer, and together they must exercise
//! every rule, scenario, flow choice and optional template group of the candidate: a rule no
//! sample fires could be cut short or emptied unseen, and a rule that is gone is missed by the
//! sample that expects its finding. The incoming flow descriptions and code lists are held the
//! same way by the samples of `rules/samples/incoming/`. Only a set that passes all of that
//! replaces the running one.

use std::collections::HashMap;

use crate::dtc::catalogue::Catalogue;
use crate::dtc::write::Envelope;
use crate::rules::engine::Rules;
use crate::rules::schema::Schema;
use crate::rules::template::Template;

/// The schema file of the v4 body, under `schemas/`.
pub const SCHEMA_FILE: &str = "sip-v4.schema.json";

/// Everything that decides a request, immutable once built.
pub struct RuleSet {
    /// Short hash of every file that went in: the revision named in every answer.
    pub revision: String,
    pub schema: Schema,
    pub rules: Rules,
    pub templates: HashMap<String, Template>,
    pub catalogue: Catalogue,
    /// The incoming flows the gateway reads, and the code lists that give their values a meaning.
    pub incoming: crate::rules::incoming::Incoming,
    pub envelope: Envelope,
    pub sender_role: String,
    pub roles: std::collections::BTreeMap<String, String>,
    pub max_errors: usize,
    /// The files it was built from, relative to the rules folder.
    pub files: Vec<String>,
    /// What the samples of `rules/samples/` exercise (all of it, or the set would not load):
    /// `rules 21/21, scenarios 8/8, flow choices 5/5, optional groups 4/4, incoming flows 2/2,
    /// incoming items 15/15, codes 4/4`.
    pub coverage: String,
    /// How many samples it was checked with (incoming samples included).
    pub samples: usize,
}
