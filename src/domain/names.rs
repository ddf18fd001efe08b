//! Object names: the limits every name flowgate writes to a sink is held to, in one place.
//!
//! A 200 promises delivery, so a name built from what a client sent (its job id), from the keys
//! file (its client name), from configuration (`flows.object_name`, `sink.s3.prefix`) or from a
//! sender (an inbound file's name) must fit every sink before it is promised:
//!
//! - each segment (the text between two `/`) at most [`SEGMENT_MAX`] bytes: the local folder's
//!   file systems refuse longer file names, forever ("File name too long");
//! - the whole key, the S3 sink's prefix included, at most [`KEY_MAX`] bytes: S3's limit (Ceph
//!   RGW answers `InvalidObjectName` past it).
//!
//! The bucket is held to the segment limit too, so one name is valid in either sink (and in any
//! copy of the bucket onto a file system). Text that may be longer goes through [`fit`]: kept as
//! it is when it fits, else cut and followed by `~` and the SHA-256 of the exact text, so the
//! name is the same on every instance, and two different texts never share one.

use sha2::{Digest, Sha256};

/// Most bytes in one segment of a name: NAME_MAX of ext4, XFS, Btrfs and tmpfs.
pub(crate) const SEGMENT_MAX: usize = 255;

/// Most bytes in a whole object key, the sink's prefix included: S3's limit.
pub(crate) const KEY_MAX: usize = 1024;

/// Most bytes in a path handed to the local file system (Linux PATH_MAX, less its NUL).
pub(crate) const PATH_MAX: usize = 4095;

/// Bytes of the hash that stands for the text [`fit`] cuts: SHA-256 in hex, so two texts share
/// a name only if they share a SHA-256.
const HASH_HEX: usize = 64;

/// Marks a name [`fit`] shortened. The forms kept as they are never hold it: the job id's
/// encoding turns `~` into `%7E`, a client's slug is `[a-z0-9-]`.
const CUT_MARK: char = '~';

/// Bytes of the longest job archive name, `jobs/<client>/<job id>.json`: each of the two
/// segments is fitted to [`SEGMENT_MAX`].
pub(crate) const ARCHIVE_MAX: usize = "jobs/".len() + SEGMENT_MAX + 1 + SEGMENT_MAX;

/// Bytes of the longest name inbound writes: `in/processed/<name>` (the ledger's names are
/// shorter), the file's name fitted to [`SEGMENT_MAX`] with its suffixes.
pub(crate) const INBOUND_MAX: usize = "in/processed/".len() + SEGMENT_MAX;

/// Flow ids are DTC's: `D` and four digits.
pub(crate) const FLOW_ID_MAX: usize = 5;

/// The longest value of each placeholder of `flows.object_name`: roles are one letter (config),
/// MPIDs four characters (the keys file, the recipient check), file ids the instance's two
/// characters and eight base-36 digits.
const PLACEHOLDERS: [(&str, usize); 6] =
    [("{to_role}", 1), ("{to_mpid}", 4), ("{flow}", FLOW_ID_MAX), ("{from_role}", 1), ("{from_mpid}", 4), ("{file_id}", 10)];

/// `readable` when it is at most `max` bytes; else as much of it as fits before `~` and the
/// SHA-256 (hex) of `exact`, cut on a character boundary and never inside a `%XX` escape.
pub fn fit(readable: &str, exact: &str, max: usize) -> String {
    if readable.len() <= max {
        return readable.to_string();
    }
    let hash: String = Sha256::digest(exact.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let mut end = max.saturating_sub(HASH_HEX + CUT_MARK.len_utf8()).min(readable.len());
    while !readable.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = readable.as_bytes();
    let at = |i: usize| i < end && bytes.get(end - 1 - i) == Some(&b'%');
    if at(0) {
        end -= 1;
    } else if at(1) {
        end -= 2;
    }
    format!("{}{CUT_MARK}{hash}", readable.get(..end).unwrap_or_default())
}

/// Why a name cannot be delivered to every sink ([`check`]); the texts complete "names with ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{len} bytes with the prefix, more than an object key's {KEY_MAX}")]
    KeyTooLong { len: usize },
    #[error("a control character")]
    ControlCharacter,
    #[error("an empty segment (a leading, trailing or double /)")]
    EmptySegment,
    #[error("a segment that starts with a dot ({segment:?})")]
    DotSegment { segment: String },
    #[error("a segment of {len} bytes, more than a file name's {SEGMENT_MAX}")]
    SegmentTooLong { len: usize },
}

/// A flow id that cannot be part of a delivered file's name ([`check_flow_id`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow id {flow:?} must be 1 to {FLOW_ID_MAX} letters or digits: it is part of the delivered file's name")]
pub struct FlowIdError {
    pub flow: String,
}

/// Why `flows.object_name` cannot stand for names ([`longest_flow_name`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectNameError {
    #[error("must hold {{file_id}}: without it two flow files would share a name")]
    NoFileId,
    #[error("an unknown placeholder; the known ones are {}", PLACEHOLDERS.map(|(p, _)| p).join(", "))]
    UnknownPlaceholder,
}

/// Why the configured names (`flows.object_name`, `sink.s3.prefix`) do not fit every sink
/// ([`check_configured`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfiguredNameError {
    #[error("flows.object_name {template:?}: {source}")]
    Template { template: String, source: ObjectNameError },
    #[error("flows.object_name {template:?} gives names with {source}")]
    Names { template: String, source: NameError },
    #[error("sink.s3.prefix has a segment of {len} bytes, more than a file name's {SEGMENT_MAX}")]
    PrefixSegment { len: usize },
    #[error(
        "sink.s3.prefix is {len} bytes: with the longest object name ({longest} bytes) a key would pass S3's {KEY_MAX}; at most {} bytes",
        KEY_MAX.saturating_sub(*longest)
    )]
    PrefixTooLong { len: usize, longest: usize },
}

/// Why `name` could not be delivered to every sink, if it could not: an empty, `.`-led (`.`,
/// `..`, and the local folder's own `.tmp`) or over-long segment, a control character, or more
/// than [`KEY_MAX`] bytes after `prefix`.
pub fn check(prefix: &str, name: &str) -> Result<(), NameError> {
    if prefix.len() + name.len() > KEY_MAX {
        return Err(NameError::KeyTooLong { len: prefix.len() + name.len() });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err(NameError::EmptySegment);
        }
        if segment.starts_with('.') {
            return Err(NameError::DotSegment { segment: segment.to_string() });
        }
        if segment.len() > SEGMENT_MAX {
            return Err(NameError::SegmentTooLong { len: segment.len() });
        }
    }
    Ok(())
}

/// A flow id as it may appear in a name: 1 to [`FLOW_ID_MAX`] ASCII letters or digits.
pub(crate) fn check_flow_id(flow: &str) -> Result<(), FlowIdError> {
    if flow.is_empty() || flow.len() > FLOW_ID_MAX || !flow.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(FlowIdError { flow: flow.to_string() });
    }
    Ok(())
}

/// The longest name `template` (`flows.object_name`) can give: each placeholder at its longest.
/// Refused if it holds no `{file_id}` (the only value that tells two files apart) or a
/// placeholder flowgate does not fill.
pub(crate) fn longest_flow_name(template: &str) -> Result<String, ObjectNameError> {
    if !template.contains("{file_id}") {
        return Err(ObjectNameError::NoFileId);
    }
    let mut name = template.to_string();
    for (placeholder, longest) in PLACEHOLDERS {
        name = name.replace(placeholder, &"X".repeat(longest));
    }
    if name.contains('{') || name.contains('}') {
        return Err(ObjectNameError::UnknownPlaceholder);
    }
    Ok(name)
}

/// The configured names against the limits: `template` (`flows.object_name`) at its longest, and
/// every name flowgate writes after `prefix` (the S3 sink's key prefix, with its `/`; empty for
/// the local folder). The length of the longest name, or the reason they do not fit.
pub(crate) fn check_configured(template: &str, prefix: &str) -> Result<usize, ConfiguredNameError> {
    let flow = longest_flow_name(template).map_err(|source| ConfiguredNameError::Template { template: template.to_string(), source })?;
    check("", &flow).map_err(|source| ConfiguredNameError::Names { template: template.to_string(), source })?;
    if let Some(long) = prefix.split('/').find(|s| s.len() > SEGMENT_MAX) {
        return Err(ConfiguredNameError::PrefixSegment { len: long.len() });
    }
    let longest = flow.len().max(ARCHIVE_MAX).max(INBOUND_MAX);
    if prefix.len() + longest > KEY_MAX {
        return Err(ConfiguredNameError::PrefixTooLong { len: prefix.len(), longest });
    }
    Ok(longest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_a_hash() {
        assert_eq!(fit("JOB-1", "JOB-1", 250), "JOB-1");
        let long = "a".repeat(300);
        let cut = fit(&long, &long, 250);
        assert_eq!(cut.len(), 250);
        assert!(cut.starts_with(&"a".repeat(185)) && cut.contains('~'), "{cut}");
        // Never inside a character or a %XX escape.
        let e = "\u{e9}".repeat(200);
        assert!(fit(&e, &e, 100).len() <= 100);
        for shift in 0..3 {
            let encoded = format!("{}{}", "x".repeat(shift), "%C3%A9".repeat(100));
            let cut = fit(&encoded, "exact", 200);
            let head = cut.split('~').next().unwrap();
            assert!(cut.len() <= 200 && head.len() >= 130, "{cut}");
            let b = head.as_bytes();
            assert!(b.iter().enumerate().all(|(i, &c)| c != b'%' || i + 2 < b.len()), "an escape cut in two: {head}");
        }
    }

    #[test]
    fn names_are_checked_segment_by_segment_and_whole() {
        assert!(check("", "out/XTEST/D0139_DEMO_FG00000001.usr").is_ok());
        assert!(check("", &format!("jobs/{}/x.json", "a".repeat(255))).is_ok());
        assert!(check("", &format!("jobs/{}/x.json", "a".repeat(256))).is_err());
        assert!(check(&"p".repeat(1014), "out/a/b.usr").is_err());
        assert!(check(&"p".repeat(1013), "out/a/b.usr").is_ok());
        for bad in ["/out/x", "out//x", "out/x/", "out/../x", ".tmp/x", "out/\u{7}"] {
            assert!(check("", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configured_templates_and_prefixes_must_fit() {
        let default = "out/{to_role}{to_mpid}/{flow}_{from_mpid}_{file_id}.usr";
        assert!(check_configured(default, "").is_ok());
        assert!(check_configured(default, "site-a/").is_ok());
        // A prefix of `len` bytes with its `/`, in segments a file name may be.
        let prefix = |len: usize| format!("{}/{}/", "p".repeat(254), "q".repeat(len - 256));
        assert!(check_configured(default, &prefix(KEY_MAX - ARCHIVE_MAX)).is_ok());
        let e = check_configured(default, &prefix(KEY_MAX - ARCHIVE_MAX + 1)).unwrap_err().to_string();
        assert!(e.contains("at most 508 bytes"), "{e}");
        assert!(check_configured(default, &format!("{}/", "p".repeat(256))).unwrap_err().to_string().contains("segment of 256 bytes"));
        assert_eq!(check_configured(default, ""), Ok(ARCHIVE_MAX));
        assert_eq!(
            check_configured("out/{flow}.usr", "").unwrap_err().to_string(),
            "flows.object_name \"out/{flow}.usr\": must hold {file_id}: without it two flow files would share a name"
        );
        assert_eq!(
            check_configured("out/{file_id}{mpan}.usr", "").unwrap_err().to_string(),
            "flows.object_name \"out/{file_id}{mpan}.usr\": an unknown placeholder; the known ones are \
             {to_role}, {to_mpid}, {flow}, {from_role}, {from_mpid}, {file_id}"
        );
        assert_eq!(
            check_configured("out/.x/{file_id}", "").unwrap_err().to_string(),
            "flows.object_name \"out/.x/{file_id}\" gives names with a segment that starts with a dot (\".x\")"
        );
        assert!(check_configured("out/{file_id}{mpan}.usr", "").unwrap_err().to_string().contains("unknown placeholder"));
        assert!(check_configured(&format!("out/{}{{file_id}}.usr", "x".repeat(250)), "").unwrap_err().to_string().contains("segment of 264 bytes"));
        assert!(check_configured("/out/{file_id}", "").is_err());
        assert!(check_flow_id("D0139").is_ok());
        for bad in ["", "D01390", "D0/1", "D.13"] {
            assert!(check_flow_id(bad).is_err(), "{bad}");
        }
        assert!(check_configured(&format!("{}/{{file_id}}", ["d"; 600].join("/")), "").unwrap_err().to_string().contains("object key"));
    }
}
