//! The one DTC writer: a flow's records, wrapped in its ZHV header and ZPT trailer, with a file
//! id and a time, and the object name it is delivered under.

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
pub(crate) fn push_record(out: &mut String, fields: &[&str], eol: &str) {
    for f in fields {
        out.push_str(f);
        out.push('|');
    }
    out.push_str(eol);
}

impl FlowBody {
    /// `<to role><to MPID>` as the answer shows it: `X/TEST`.
    pub(crate) fn to_label(&self) -> String {
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
