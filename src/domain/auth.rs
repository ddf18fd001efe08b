//! API keys and the clients they belong to.
//!
//! The keys file (YAML) holds each client's name, SIP ID, rate limit and the SHA-256 of its key;
//! never the key. Keys are 256-bit random tokens, so a plain hash is enough (no password KDF), and
//! a presented key is compared against every stored hash in constant time.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read the keys file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write the keys file {0}: {1}")]
    Write(String, std::io::Error),
    #[error("the keys file {0} is not valid: {1}")]
    Parse(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// The keys file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub clients: Vec<Client>,
}

/// One client of the gateway: a SIP platform holding one key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Who the client is (shown in logs and metrics).
    pub name: String,
    /// The SIP ID (J2320) written as sender into every flow this client causes.
    pub sip_id: String,
    /// A public id of the key, safe to log: the first 12 hex digits of its hash.
    pub key_id: String,
    /// SHA-256 of the key, hex.
    pub key_sha256: String,
    #[serde(default)]
    pub rate: Rate,
    #[serde(default)]
    pub revoked: bool,
}

/// A GCRA quota: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// How long one spent request takes to come back.
    pub(crate) fn cell_interval(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1_000_000_000 / u64::from(self.per_second.max(1)))
    }
}

impl Default for Rate {
    fn default() -> Self {
        Rate { per_second: 10, burst: 20 }
    }
}

fn sha256_hex(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random key: `fgk_` and 64 hex digits (256 bits from the OS).
pub(crate) fn new_key() -> Result<String, KeysError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| KeysError::Invalid(format!("no randomness: {e}")))?;
    Ok(format!("fgk_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Two client names that a person would read as one (case and surrounding space aside).
fn same_name(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// The same client: exactly the same name and SIP ID. A client's identity never changes: its
/// requests, idempotency and status are stored under it.
fn same_identity(c: &Client, name: &str, sip_id: &str) -> bool {
    c.name == name && c.sip_id == sip_id
}

fn name_taken(name: &str, other: &Client) -> String {
    format!(
        "the client name {name:?} is held by client {:?} (SIP ID {}); a client's name and SIP ID never change: \
         another key of that client needs exactly its name and SIP ID, a new client needs another name",
        other.name, other.sip_id
    )
}

fn valid_sip_id(s: &str) -> bool {
    s.len() == 4 && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

impl KeysFile {
    pub fn read(path: &Path) -> Result<KeysFile, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeysError::Read(path.display().to_string(), e))?;
        let file: KeysFile = yaml_serde::from_str(&text).map_err(|e| KeysError::Parse(path.display().to_string(), e.to_string()))?;
        for (i, c) in file.clients.iter().enumerate() {
            // A hand edit gets the same identity check as `keys add`: one name, one SIP ID.
            if let Some(other) = file.clients[..i].iter().find(|o| !same_identity(o, &c.name, &c.sip_id) && same_name(&o.name, &c.name)) {
                return Err(KeysError::Parse(path.display().to_string(), name_taken(&c.name, other)));
            }
            if !valid_sip_id(&c.sip_id) {
                return Err(KeysError::Parse(path.display().to_string(), format!("client {:?}: sip_id must be 4 upper-case letters or digits", c.name)));
            }
            if c.key_sha256.len() != 64 || !c.key_sha256.chars().all(|ch| ch.is_ascii_hexdigit()) {
                return Err(KeysError::Parse(path.display().to_string(), format!("client {:?}: key_sha256 must be 64 hex digits", c.name)));
            }
            if c.rate.per_second == 0 || c.rate.burst == 0 {
                return Err(KeysError::Parse(path.display().to_string(), format!("client {:?}: rate must be at least 1/s with a burst of 1", c.name)));
            }
        }
        Ok(file)
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), KeysError> {
        let err = |e| KeysError::Write(path.display().to_string(), e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let text = yaml_serde::to_string(self).map_err(|e| KeysError::Invalid(e.to_string()))?;
        let header = "# flowgate keys: only hashes of keys are stored here; `flowgate keys add` prints a new key once.\n";
        // A temporary file of our own (owner-only), fsync'd, renamed over the old one, and the
        // folder fsync'd: a crash leaves the old file or the new one, never a part of either.
        let tmp = path.with_extension(format!("yaml.{}.tmp", ulid::Ulid::new()));
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp).map_err(err)?;
            f.write_all(header.as_bytes()).map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        Ok(())
    }

    /// An exclusive lock beside the keys file (`<file>.lock`), held until the returned file is
    /// dropped: the `keys` commands take it around their read-change-write.
    pub fn lock(path: &Path) -> Result<std::fs::File, KeysError> {
        let err = |e| KeysError::Write(path.display().to_string(), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path.with_extension("yaml.lock")).map_err(err)?;
        lock.lock().map_err(err)?;
        Ok(lock)
    }

    /// Adds a client with a fresh key; returns the key (shown once, never stored).
    pub fn add(&mut self, name: &str, sip_id: &str, rate: Rate) -> Result<String, KeysError> {
        if name.trim().is_empty() {
            return Err(KeysError::Invalid("a client needs a name".into()));
        }
        if !valid_sip_id(sip_id) {
            return Err(KeysError::Invalid("the SIP ID must be 4 upper-case letters or digits".into()));
        }
        // Another key for the same client (same name, same SIP ID) is a rotation; the name of
        // another client is refused, or the new key would read and replay that client's requests.
        if let Some(other) = self.clients.iter().find(|o| same_name(&o.name, name) && !same_identity(o, name, sip_id)) {
            return Err(KeysError::Invalid(name_taken(name, other)));
        }
        let key = new_key()?;
        let hash = sha256_hex(&key);
        self.clients.push(Client {
            name: name.to_string(),
            sip_id: sip_id.to_string(),
            key_id: hash[..12].to_string(),
            key_sha256: hash,
            rate,
            revoked: false,
        });
        Ok(key)
    }

    /// Marks every key of the client with this name or key id as revoked; how many were.
    pub fn revoke(&mut self, who: &str) -> usize {
        let mut n = 0;
        for c in self.clients.iter_mut().filter(|c| c.name == who || c.key_id == who) {
            if !c.revoked {
                c.revoked = true;
                n += 1;
            }
        }
        n
    }

    /// The live client whose key this is, if any. Every stored hash is compared, in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<&Client> {
        let hash = sha256_hex(presented);
        let mut found = None;
        for c in &self.clients {
            let same: bool = hash.as_bytes().ct_eq(c.key_sha256.as_bytes()).into();
            if same && !c.revoked {
                found = Some(c);
            }
        }
        found
    }
}

/// The key a request presents: `X-API-Key`, or `Authorization: Bearer`.
pub(crate) fn presented_key(headers: &hyper::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_sha256_in_lower_hex() {
        // The standard test vector: keys files written by any version of flowgate keep working.
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_key_authenticates_only_its_own_client_until_revoked() {
        let mut keys = KeysFile::default();
        let a = keys.add("Alpha", "ALPH", Rate::default()).unwrap();
        let b = keys.add("Beta", "BETA", Rate::default()).unwrap();
        assert_eq!(keys.authenticate(&a).unwrap().name, "Alpha");
        assert_eq!(keys.authenticate(&b).unwrap().name, "Beta");
        assert!(keys.authenticate("fgk_nope").is_none());
        assert!(!yaml_serde::to_string(&keys).unwrap().contains(&a));
        assert_eq!(keys.revoke("Alpha"), 1);
        assert!(keys.authenticate(&a).is_none());
    }

    #[test]
    fn a_name_held_by_another_client_is_refused_and_a_rotation_is_not() {
        let mut keys = KeysFile::default();
        keys.add("Alpha", "ALPH", Rate::default()).unwrap();
        for (name, sip_id) in [("Alpha", "ZZZZ"), ("alpha", "ZZZZ"), (" ALPHA ", "ALPH"), ("alpha", "ALPH")] {
            let e = keys.add(name, sip_id, Rate::default()).unwrap_err().to_string();
            assert!(e.contains("held by client \"Alpha\" (SIP ID ALPH)"), "{name:?}/{sip_id}: {e}");
        }
        keys.add("Alpha", "ALPH", Rate::default()).unwrap();
        keys.add("Beta", "ALPH", Rate::default()).unwrap();
        assert_eq!(keys.clients.len(), 3);
        // The same clash written into the file by hand is refused when it is read.
        keys.clients.push(Client { name: "alpha".into(), sip_id: "ZZZZ".into(), ..keys.clients[0].clone() });
        let dir = std::env::temp_dir().join(format!("flowgate-keys-{}", ulid::Ulid::new()));
        let path = dir.join("keys.yaml");
        keys.write(&path).unwrap();
        let e = KeysFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("held by client"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_sip_ids_are_refused() {
        let mut keys = KeysFile::default();
        assert!(keys.add("x", "abc", Rate::default()).is_err());
        assert!(keys.add("x", "ab|d", Rate::default()).is_err());
    }
}
