//! The DTC reader: a flow file (bytes) to a typed tree, or the list of what is wrong with it.
//!
//! It reads with the same catalogue extract the writer is checked against (`flow-templates/
//! catalogue/`): group codes, parents and levels, cardinalities, field lists, formats and valid
//! sets. It checks the ZHV envelope, the nesting of group records (a stack by level), every
//! field, the ZPT counts, and MPAN check digits. It never panics: any bytes give either a
//! [`ParsedFlow`] or findings with line numbers.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::dtc::catalogue::{CatFlow, CatGroup, Catalogue, Format, FormatError};

/// Most findings reported for one file; the rest are counted.
const MAX_FINDINGS: usize = 100;

/// The ZHV header record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// J1064.
    pub file_id: String,
    /// `D0126`.
    pub flow: String,
    /// `001`.
    pub version: String,
    pub from_role: String,
    pub from_mpid: String,
    pub to_role: String,
    pub to_mpid: String,
    /// J0280, `ccyymmddhhmmss`.
    pub created: String,
    /// J1060, J1061, J1062: usually empty.
    pub sending_application: String,
    pub receiving_application: String,
    pub broadcast: String,
    /// J1063: `OPER` or `TRnn`.
    pub test_flag: String,
}

/// The ZPT trailer record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trailer {
    pub file_id: String,
    /// J1067: group records between ZHV and ZPT.
    pub group_count: u64,
    /// J1078: empty in every known file.
    pub checksum: String,
    /// J1066: top-level groups.
    pub flow_count: u64,
    /// J1065, `ccyymmddhhmmss`.
    pub completed: String,
}

/// One group record and the records nested under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub code: String,
    /// `(data item, value)` in catalogue order; an empty value is an absent optional item.
    pub fields: Vec<(String, String)>,
    pub children: Vec<Group>,
}

impl Group {
    /// The value of a data item in this record, if the item is there and not empty.
    pub fn get(&self, item: &str) -> Option<&str> {
        self.fields.iter().find(|(i, v)| i == item && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// Every group below this one (not only direct children) with this code, in file order.
    pub(crate) fn descendants<'a>(&'a self, code: &'a str) -> impl Iterator<Item = &'a Group> + 'a {
        let mut stack: Vec<&Group> = self.children.iter().rev().collect();
        std::iter::from_fn(move || {
            while let Some(g) = stack.pop() {
                stack.extend(g.children.iter().rev());
                if g.code == code {
                    return Some(g);
                }
            }
            None
        })
    }
}

/// A flow file that read cleanly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedFlow {
    pub header: Header,
    /// Top-level groups, each with its children.
    pub groups: Vec<Group>,
    pub trailer: Trailer,
    /// Whether the records end with CR LF (else LF).
    pub crlf: bool,
}

impl ParsedFlow {
    /// The file again, byte for byte as the writer (`FlowBody::finish`) lays it out.
    pub fn to_bytes(&self) -> Vec<u8> {
        let eol = if self.crlf { "\r\n" } else { "\n" };
        let mut out = String::new();
        let mut line = |fields: &[&str]| crate::dtc::write::push_record(&mut out, fields, eol);
        let h = &self.header;
        let flow_version = format!("{}{}", h.flow, h.version);
        line(&[
            "ZHV",
            &h.file_id,
            &flow_version,
            &h.from_role,
            &h.from_mpid,
            &h.to_role,
            &h.to_mpid,
            &h.created,
            &h.sending_application,
            &h.receiving_application,
            &h.broadcast,
            &h.test_flag,
        ]);
        fn groups(gs: &[Group], line: &mut dyn FnMut(&[&str])) {
            for g in gs {
                let mut fields = vec![g.code.as_str()];
                fields.extend(g.fields.iter().map(|(_, v)| v.as_str()));
                line(&fields);
                groups(&g.children, line);
            }
        }
        groups(&self.groups, &mut line);
        let t = &self.trailer;
        line(&["ZPT", &t.file_id, &t.group_count.to_string(), &t.checksum, &t.flow_count.to_string(), &t.completed]);
        out.into_bytes()
    }
}

/// One thing wrong with a file: the line it is on (0: the file as a whole) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadFinding {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ReadFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "file: {}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

#[derive(Default)]
struct Findings(Vec<ReadFinding>);

impl Findings {
    fn add(&mut self, line: usize, message: impl Into<String>) {
        self.0.push(ReadFinding { line, message: message.into() });
    }

    /// Enough to say what is wrong: reading stops here, so garbage costs no more than this.
    fn full(&self) -> bool {
        self.0.len() >= MAX_FINDINGS
    }

    /// The findings in line order (the file as a whole last).
    fn finish(mut self) -> Vec<ReadFinding> {
        self.0.sort_by_key(|f| if f.line == 0 { usize::MAX } else { f.line });
        self.0
    }
}

/// One record: its line number and its fields (record type first, trailing `|` removed).
struct Record<'a> {
    line: usize,
    fields: Vec<&'a str>,
}

/// Reads one flow file.
///
/// One pass, one record at a time (the last record seen is held back: it may be the ZPT), so
/// memory beyond the tree it returns stays small whatever the input; reading stops after
/// `MAX_FINDINGS` findings.
pub fn read(bytes: &[u8], catalogue: &Catalogue) -> Result<ParsedFlow, Vec<ReadFinding>> {
    let mut out = Findings::default();
    if bytes.is_empty() {
        out.add(0, "the file is empty");
        return Err(out.finish());
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return Err(encoding_findings(bytes).finish()),
    };
    let crlf = text.split_inclusive('\n').next().is_some_and(|l| l.ends_with("\r\n"));
    let mut head: Option<(Header, &CatFlow)> = None;
    let mut held: Option<Record<'_>> = None;
    let mut groups: Option<GroupReader<'_>> = None;
    let mut last_line = 0;
    for (i, piece) in text.split_inclusive('\n').enumerate() {
        let line = i + 1;
        last_line = line;
        if out.full() {
            out.add(0, format!("stopped reading at line {line}: too many findings"));
            return Err(out.finish());
        }
        let Some(rec) = record(line, piece, crlf, &mut out) else { continue };
        match (&head, &mut groups) {
            (None, _) => {
                if rec.fields.first() != Some(&"ZHV") {
                    out.add(line, format!("the first record must be ZHV, not {}", shown(rec.fields.first().copied().unwrap_or_default())));
                    return Err(out.finish());
                }
                let Some((header, flow)) = read_header(&rec, catalogue, &mut out) else {
                    return Err(out.finish());
                };
                head = Some((header, flow));
                groups = Some(GroupReader::new(flow));
            }
            (Some(_), Some(reader)) => {
                if let Some(previous) = held.replace(rec) {
                    reader.record(&previous, &mut out);
                }
            }
            (Some(_), None) => {}
        }
    }
    let (Some((header, _)), Some(reader)) = (head, groups) else {
        out.add(0, "no records");
        return Err(out.finish());
    };
    read_end(header, reader, held, last_line, crlf, out)
}

/// One line as a record, or `None` (with a finding) when it is not one. A line ends with LF or
/// CR LF, as line 1 does; the last line may lack its ending.
fn record<'a>(line: usize, piece: &'a str, crlf: bool, out: &mut Findings) -> Option<Record<'a>> {
    let (content, ending) = match piece.strip_suffix('\n') {
        Some(c) => match c.strip_suffix('\r') {
            Some(c) => (c, Some(true)),
            None => (c, Some(false)),
        },
        None => (piece.strip_suffix('\r').unwrap_or(piece), None),
    };
    if ending.is_some_and(|cr| cr != crlf) {
        out.add(line, if crlf { "ends with LF, line 1 with CR LF" } else { "ends with CR LF, line 1 with LF" });
    }
    if content.is_empty() {
        out.add(line, "empty line");
        return None;
    }
    let Some(content) = content.strip_suffix('|') else {
        out.add(line, "record does not end with '|' (truncated?)");
        return None;
    };
    Some(Record { line, fields: content.split('|').collect() })
}

/// After the last line: the record held back is the ZPT (or the file was cut short, and it is
/// one more group record); the groups are closed and the trailer's counts checked.
fn read_end(
    header: Header,
    mut reader: GroupReader<'_>,
    held: Option<Record<'_>>,
    last_line: usize,
    crlf: bool,
    mut out: Findings,
) -> Result<ParsedFlow, Vec<ReadFinding>> {
    let zpt = match held {
        Some(last) if last.fields.first() == Some(&"ZPT") => Some(last),
        other => {
            if let Some(last) = other {
                reader.record(&last, &mut out);
            }
            out.add(last_line, "the file ends without a ZPT trailer (truncated?)");
            None
        }
    };
    let (groups, top, count) = reader.finish(&mut out);
    let trailer = zpt.and_then(|z| read_trailer(&z, &header, count, top, &mut out));
    match trailer {
        Some(trailer) if out.0.is_empty() => Ok(ParsedFlow { header, groups, trailer, crlf }),
        _ => Err(out.finish()),
    }
}

/// Where a file is not UTF-8: one finding per line (LF-separated) that is not.
fn encoding_findings(bytes: &[u8]) -> Findings {
    let mut out = Findings::default();
    for (i, l) in bytes.split(|b| *b == b'\n').enumerate() {
        if let Err(e) = std::str::from_utf8(l) {
            if out.full() {
                out.add(0, format!("stopped reading at line {}: too many findings", i + 1));
                break;
            }
            let at = e.valid_up_to();
            let byte = l.get(at).copied().unwrap_or_default();
            out.add(i + 1, format!("not UTF-8 text (byte 0x{byte:02X} at column {})", at + 1));
        }
    }
    out
}

/// A value as shown in a finding: quoted, escaped, and cut short if long.
fn shown(v: &str) -> String {
    const MAX: usize = 40;
    if v.chars().count() > MAX {
        let cut: String = v.chars().take(MAX).collect();
        format!("{cut:?}...")
    } else {
        format!("{v:?}")
    }
}

fn is_upper_alnum(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn read_header<'c>(rec: &Record<'_>, catalogue: &'c Catalogue, out: &mut Findings) -> Option<(Header, &'c CatFlow)> {
    let line = rec.line;
    let f = &rec.fields;
    if f.len() != 12 {
        out.add(line, format!("ZHV has {} fields, must have 12", f.len()));
        return None;
    }
    let get = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
    let flow_version = get(2);
    let (flow, version) = match (flow_version.get(..5), flow_version.get(5..)) {
        (Some(id), Some(v)) if flow_version.len() == 8 => (id.to_string(), v.to_string()),
        _ => {
            out.add(line, format!("ZHV flow and version {} is not 8 characters (D0126001)", shown(&flow_version)));
            return None;
        }
    };
    let Some(cat) = catalogue.flows.get(&flow) else {
        out.add(line, format!("ZHV flow {} is not in the catalogue", shown(&flow)));
        return None;
    };
    if cat.version != version {
        out.add(line, format!("ZHV flow {flow} version {} is not the catalogue's {}", shown(&version), cat.version));
        return None;
    }
    let header = Header {
        file_id: get(1),
        flow,
        version,
        from_role: get(3),
        from_mpid: get(4),
        to_role: get(5),
        to_mpid: get(6),
        created: get(7),
        sending_application: get(8),
        receiving_application: get(9),
        broadcast: get(10),
        test_flag: get(11),
    };
    if header.file_id.is_empty() || header.file_id.len() > 10 || !is_upper_alnum(&header.file_id) {
        out.add(line, format!("ZHV file identifier {} must be 1 to 10 upper-case letters or digits", shown(&header.file_id)));
    }
    for (name, v) in [("from role", &header.from_role), ("to role", &header.to_role)] {
        if v.len() != 1 || !v.bytes().all(|b| b.is_ascii_uppercase()) {
            out.add(line, format!("ZHV {name} {} must be one upper-case letter", shown(v)));
        }
    }
    for (name, v) in [("from MPID", &header.from_mpid), ("to MPID", &header.to_mpid)] {
        if v.len() != 4 || !is_upper_alnum(v) {
            out.add(line, format!("ZHV {name} {} must be 4 upper-case letters or digits", shown(v)));
        }
    }
    if let Err(why) = check_format(Format::DateTime, &header.created) {
        out.add(line, format!("ZHV creation timestamp {}: {why}", shown(&header.created)));
    }
    for (name, v, n) in [
        ("sending application id", &header.sending_application, 5),
        ("receiving application id", &header.receiving_application, 5),
        ("broadcast", &header.broadcast, 1),
    ] {
        if v.chars().count() > n || v.chars().any(char::is_control) {
            out.add(line, format!("ZHV {name} {} must be at most {n} characters", shown(v)));
        }
    }
    let t = &header.test_flag;
    let training = t.len() == 4 && t.starts_with("TR") && t.bytes().skip(2).all(|b| b.is_ascii_digit());
    if t != "OPER" && !training {
        out.add(line, format!("ZHV test data flag {} is neither OPER nor TRnn", shown(t)));
    }
    Some((header, cat))
}

/// A group being read: its record, and how many of each child code it has so far.
struct Open<'c> {
    cat: &'c CatGroup,
    line: usize,
    group: Group,
    children: BTreeMap<&'c str, u64>,
}

/// Group records in, a tree out: nesting by a stack of open groups, one per level.
struct GroupReader<'c> {
    flow: &'c CatFlow,
    stack: Vec<Open<'c>>,
    top_groups: Vec<Group>,
    top_counts: BTreeMap<&'c str, u64>,
    /// Top-level records, and all group records (the ZPT counts).
    top: u64,
    count: usize,
}

impl<'c> GroupReader<'c> {
    fn new(flow: &'c CatFlow) -> GroupReader<'c> {
        GroupReader { flow, stack: Vec::new(), top_groups: Vec::new(), top_counts: BTreeMap::new(), top: 0, count: 0 }
    }

    fn record(&mut self, rec: &Record<'_>, out: &mut Findings) {
        let flow = self.flow;
        let line = rec.line;
        self.count += 1;
        let code = rec.fields.first().copied().unwrap_or_default();
        let Some(cat) = flow.groups.get(code) else {
            let what = match code {
                "ZHV" | "ZPT" => format!("a {code} record inside the file"),
                _ => format!("group {} is not part of {}", shown(code), flow.id),
            };
            out.add(line, what);
            return;
        };
        let level = cat.level.max(1);
        if level > self.stack.len() + 1 {
            let parent = cat.parent.as_deref().unwrap_or("-");
            out.add(line, format!("group {code} (level {level}) has no {parent} record above it"));
            return;
        }
        close(&mut self.stack, level - 1, flow, &mut self.top_groups, out);
        match self.stack.last_mut() {
            None => {
                self.top += 1;
                if cat.parent.is_some() {
                    out.add(line, format!("group {code} must sit under {}, not at the top", cat.parent.as_deref().unwrap_or_default()));
                }
                *self.top_counts.entry(cat.code.as_str()).or_default() += 1;
            }
            Some(parent) => {
                if cat.parent.as_deref() != Some(parent.cat.code.as_str()) {
                    out.add(line, format!("group {code} must sit under {}, not {}", cat.parent.as_deref().unwrap_or("the top"), parent.cat.code));
                }
                *parent.children.entry(cat.code.as_str()).or_default() += 1;
            }
        }
        let values = rec.fields.get(1..).unwrap_or_default();
        let mut fields = Vec::with_capacity(cat.fields.len());
        if values.len() != cat.fields.len() {
            out.add(line, format!("group {code} has {} fields, the catalogue has {}", values.len(), cat.fields.len()));
        } else {
            for (v, cf) in values.iter().zip(&cat.fields) {
                if let Err(why) = check_field(cf, v) {
                    out.add(line, format!("{code} {} ({}) {why}", cf.item, cf.name));
                }
                fields.push((cf.item.clone(), (*v).to_string()));
            }
        }
        let group = Group { code: cat.code.clone(), fields, children: Vec::new() };
        self.stack.push(Open { cat, line, group, children: BTreeMap::new() });
    }

    /// Closes every open group and checks the top-level counts: the tree, the top-level
    /// record count and the group record count.
    fn finish(mut self, out: &mut Findings) -> (Vec<Group>, u64, usize) {
        close(&mut self.stack, 0, self.flow, &mut self.top_groups, out);
        for g in self.flow.groups.values().filter(|g| g.parent.is_none()) {
            let n = self.top_counts.get(g.code.as_str()).copied().unwrap_or(0);
            if let Some(range) = outside(n, g) {
                out.add(0, format!("the file has {n} {} groups, allowed {range}", g.code));
            }
        }
        (self.top_groups, self.top, self.count)
    }
}

/// The allowed range of a group, if `n` is outside it.
fn outside(n: u64, g: &CatGroup) -> Option<String> {
    let too_many = g.max.is_some_and(|max| n > max);
    (n < g.min || too_many).then(|| format!("{}..{}", g.min, g.max.map_or("*".to_string(), |m| m.to_string())))
}

/// Closes groups until `depth` remain open: checks each one's child counts and attaches it.
fn close<'c>(stack: &mut Vec<Open<'c>>, depth: usize, flow: &'c CatFlow, top: &mut Vec<Group>, out: &mut Findings) {
    while stack.len() > depth {
        let Some(open) = stack.pop() else { return };
        for child in flow.groups.values().filter(|g| g.parent.as_deref() == Some(open.cat.code.as_str())) {
            let n = open.children.get(child.code.as_str()).copied().unwrap_or(0);
            if let Some(range) = outside(n, child) {
                out.add(open.line, format!("group {} has {n} {} groups under it, allowed {range}", open.cat.code, child.code));
            }
        }
        // A file with findings gives no tree: keep none, so garbage costs no memory.
        if !out.0.is_empty() {
            continue;
        }
        match stack.last_mut() {
            Some(parent) => parent.group.children.push(open.group),
            None => top.push(open.group),
        }
    }
}

/// Why one field's value does not fit its catalogue item; the finding names the record and item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum FieldError {
    #[error("is required but empty")]
    Required,
    #[error("{}: contains a control character", shown(.value))]
    ControlCharacter { value: String },
    #[error("{}: {source}", shown(.value))]
    Format { value: String, source: FormatError },
    #[error("{}: not in its valid set", shown(.value))]
    NotInValidSet { value: String },
    #[error("{}: MPAN check digit fails", shown(.value))]
    MpanCheckDigit { value: String },
}

/// One value against its catalogue item: required, characters, format, valid set, MPAN.
fn check_field(cf: &crate::dtc::catalogue::CatField, v: &str) -> Result<(), FieldError> {
    if v.is_empty() {
        return if cf.required { Err(FieldError::Required) } else { Ok(()) };
    }
    let value = || v.to_string();
    if v.chars().any(char::is_control) {
        return Err(FieldError::ControlCharacter { value: value() });
    }
    if let Some(f) = cf.format {
        check_format(f, v).map_err(|source| FieldError::Format { value: value(), source })?;
    }
    if let Some(valid) = &cf.valid {
        if !valid.iter().any(|c| c == v) {
            return Err(FieldError::NotInValidSet { value: value() });
        }
    }
    if cf.item == "J0003" && !crate::dtc::items::mpan_check_ok(v) {
        return Err(FieldError::MpanCheckDigit { value: value() });
    }
    Ok(())
}

/// A value against a DTC format. Dates are `ccyymmdd` in 1950–2199 (DTC domain), date-times
/// also need a real time of day; the rest is [`Format::check`].
fn check_format(f: Format, v: &str) -> Result<(), FormatError> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match f {
        Format::Date => {
            // Only ASCII digits reach Format::check, which slices by byte.
            if v.len() != 8 || !digits(v) {
                return Err(FormatError::NotDate);
            }
            f.check(v)?;
            let year: u32 = v.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
            if !(1950..=2199).contains(&year) {
                return Err(FormatError::DateOutOfRange);
            }
            Ok(())
        }
        Format::DateTime => {
            if v.len() != 14 || !digits(v) {
                return Err(FormatError::NotDateTime);
            }
            check_format(Format::Date, v.get(..8).unwrap_or_default()).map_err(|_| FormatError::NotDateTime)?;
            let part = |r: std::ops::Range<usize>| v.get(r).and_then(|p| p.parse::<u32>().ok()).unwrap_or(99);
            if part(8..10) > 23 || part(10..12) > 59 || part(12..14) > 59 {
                return Err(FormatError::NotTimeOfDay);
            }
            Ok(())
        }
        // A catalogue with more decimals than digits would underflow in Format::check.
        Format::Num { digits: n, decimals: d } if d > n => Err(FormatError::NotDecimal { digits: n, decimals: d }),
        _ => f.check(v),
    }
}

fn read_trailer(rec: &Record<'_>, header: &Header, groups: usize, top: u64, out: &mut Findings) -> Option<Trailer> {
    let line = rec.line;
    let f = &rec.fields;
    if f.len() != 6 {
        out.add(line, format!("ZPT has {} fields, must have 6", f.len()));
        return None;
    }
    let get = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
    let count = |name: &str, v: &str, digits: usize, out: &mut Findings| -> Option<u64> {
        match check_format(Format::Num { digits, decimals: 0 }, v).ok().and_then(|_| v.parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                out.add(line, format!("ZPT {name} {} is not NUM({digits})", shown(v)));
                None
            }
        }
    };
    let file_id = get(1);
    if file_id != header.file_id {
        out.add(line, format!("ZPT file identifier {} differs from ZHV's {}", shown(&file_id), shown(&header.file_id)));
    }
    let group_count = count("group count", &get(2), 10, out);
    // J1067 keeps the ten least significant digits.
    let actual = groups as u64 % 10_000_000_000;
    if group_count.is_some_and(|n| n != actual) {
        out.add(line, format!("ZPT group count {} but the file has {actual} group records", get(2)));
    }
    let checksum = get(3);
    if !checksum.is_empty() {
        count("checksum", &checksum, 10, out);
    }
    let flow_count = count("flow count", &get(4), 8, out);
    if flow_count.is_some_and(|n| n != top) {
        out.add(line, format!("ZPT flow count {} but the file has {top} top-level groups", get(4)));
    }
    let completed = get(5);
    if let Err(why) = check_format(Format::DateTime, &completed) {
        out.add(line, format!("ZPT completion timestamp {}: {why}", shown(&completed)));
    }
    Some(Trailer { file_id, group_count: group_count?, checksum, flow_count: flow_count?, completed })
}

/// `ccyymmdd` as `YYYY-MM-DD` (for a value the reader has already checked as a date).
pub(crate) fn iso_date(dtc: &str) -> Option<String> {
    match (dtc.get(..4), dtc.get(4..6), dtc.get(6..8)) {
        (Some(y), Some(m), Some(d)) if dtc.len() == 8 => Some(format!("{y}-{m}-{d}")),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        Catalogue::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flow-templates/catalogue")).unwrap()
    }

    const D0126: &str = "ZHV|F000000001|D0126001|J|EMEB|M|DEMO|20250110093000||||TR01|\n\
        250|1129383838383|Fuse carrier replaced||\n\
        61H|20250108|B01|C|20250110|\n\
        ZPT|F000000001|2||1|20250110093000|\n";

    fn messages(bytes: &[u8]) -> Vec<String> {
        read(bytes, &catalogue()).err().unwrap_or_default().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn reads_a_d0126_into_a_tree() {
        let flow = read(D0126.as_bytes(), &catalogue()).unwrap();
        assert_eq!(flow.header.flow, "D0126");
        assert_eq!(flow.header.to_mpid, "DEMO");
        assert_eq!(flow.groups.len(), 1);
        let g = &flow.groups[0];
        assert_eq!(g.get("J0003"), Some("1129383838383"));
        assert_eq!(g.get("J0012"), None);
        assert_eq!(g.children[0].get("J1823"), Some("C"));
        assert_eq!(g.descendants("61H").count(), 1);
        assert_eq!(flow.to_bytes(), D0126.as_bytes());
    }

    #[test]
    fn crlf_is_read_and_kept() {
        let crlf = D0126.replace('\n', "\r\n");
        let flow = read(crlf.as_bytes(), &catalogue()).unwrap();
        assert!(flow.crlf);
        assert_eq!(flow.to_bytes(), crlf.as_bytes());
        let mixed = D0126.replacen('\n', "\r\n", 1);
        assert_eq!(
            messages(mixed.as_bytes()),
            ["line 2: ends with LF, line 1 with CR LF", "line 3: ends with LF, line 1 with CR LF", "line 4: ends with LF, line 1 with CR LF"]
        );
    }

    #[test]
    fn a_missing_final_line_ending_is_accepted() {
        assert!(read(D0126.trim_end().as_bytes(), &catalogue()).is_ok());
    }

    #[test]
    fn empty_and_binary_files_are_findings() {
        assert_eq!(messages(b""), ["file: the file is empty"]);
        assert_eq!(messages(b"\xff\xfe\x00garbage"), ["line 1: not UTF-8 text (byte 0xFF at column 1)"]);
        assert_eq!(messages(b"\n"), ["line 1: empty line", "file: no records"]);
    }

    #[test]
    fn check_digits_and_counts_are_checked() {
        let bad = D0126.replace("1129383838383", "1129383838384").replace("|2||1|", "|3||1|");
        assert_eq!(
            messages(bad.as_bytes()),
            ["line 2: 250 J0003 (MPAN Core) \"1129383838384\": MPAN check digit fails", "line 4: ZPT group count 3 but the file has 2 group records"]
        );
    }

    #[test]
    fn dates_must_be_real_and_in_range() {
        assert!(check_format(Format::Date, "20250229").is_err());
        assert!(check_format(Format::Date, "18991231").is_err());
        assert!(check_format(Format::Date, "aaa€bc").is_err());
        assert!(check_format(Format::Date, "2025€10").is_err());
        assert!(check_format(Format::DateTime, "20250101246000").is_err());
        assert!(check_format(Format::DateTime, "20250101235959").is_ok());
        assert!(check_format(Format::Num { digits: 1, decimals: 2 }, "1").is_err());
        assert_eq!(check_format(Format::Date, "18991231").unwrap_err().to_string(), "not a date in 1950-2199");
        assert_eq!(check_format(Format::DateTime, "20250101246000").unwrap_err().to_string(), "not a ccyymmddhhmmss date-time (time of day)");
    }

    #[test]
    fn a_child_without_its_parent_is_a_nesting_finding() {
        let bad = "ZHV|F000000001|D0126001|J|EMEB|M|DEMO|20250110093000||||TR01|\n61H|20250108|B01|C|20250110|\nZPT|F000000001|1||0|20250110093000|\n";
        assert_eq!(messages(bad.as_bytes()), ["line 2: group 61H (level 2) has no 250 record above it", "file: the file has 0 250 groups, allowed 1..*"]);
    }

    #[test]
    fn findings_are_capped() {
        let mut s = String::from("ZHV|F000000001|D0126001|J|EMEB|M|DEMO|20250110093000||||TR01|\n");
        for _ in 0..300 {
            s.push_str("999|x|\n");
        }
        let m = messages(s.as_bytes());
        assert_eq!(m.len(), MAX_FINDINGS + 1);
        assert_eq!(m[MAX_FINDINGS], "file: stopped reading at line 103: too many findings");
    }
}
