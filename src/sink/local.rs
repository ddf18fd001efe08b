//! The local sink: a folder standing in for the DTN bucket, create-only by hard links.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::sink::{PutOutcome, SinkError};

/// A folder standing in for the DTN bucket: `<data-dir>/dtn/<object name>`, with its temporary
/// files in `<data-dir>/dtn/.tmp/` (cleared of a crash's leftovers at start,
/// [`LocalSink::clear_leftovers`]).
#[derive(Debug, Clone)]
pub struct LocalSink {
    root: PathBuf,
}

impl LocalSink {
    pub fn new(root: impl Into<PathBuf>) -> LocalSink {
        LocalSink { root: root.into() }
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, SinkError> {
        if name.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(SinkError(format!("unsafe object name {name:?}")));
        }
        Ok(self.root.join(name))
    }

    /// Create-only: written to a temporary file, fsync'd, then hard-linked into place (a link
    /// fails if the name exists, atomically), and the folder fsync'd.
    pub fn put_if_absent(&self, name: &str, bytes: &[u8]) -> Result<PutOutcome, SinkError> {
        let (outcome, dir) = self.link_in(name, bytes)?;
        if let Some(dir) = dir {
            sync_dir(&dir).map_err(|e| SinkError(format!("{name}: {e}")))?;
        }
        Ok(outcome)
    }

    /// [`LocalSink::put_if_absent`] for several files, with one fsync per folder for all of them:
    /// no file counts as created until its folder is synced.
    pub fn put_many(&self, items: &[(String, Vec<u8>)]) -> Vec<Result<PutOutcome, SinkError>> {
        let mut linked: Vec<Result<(PutOutcome, Option<PathBuf>), SinkError>> = items.iter().map(|(name, bytes)| self.link_in(name, bytes)).collect();
        let mut dirs: Vec<&PathBuf> = linked.iter().filter_map(|r| r.as_ref().ok().and_then(|(_, d)| d.as_ref())).collect();
        dirs.sort();
        dirs.dedup();
        let failed: HashMap<PathBuf, String> = dirs.into_iter().filter_map(|d| sync_dir(d).err().map(|e| (d.clone(), e.to_string()))).collect();
        linked
            .drain(..)
            .zip(items)
            .map(|(r, (name, _))| {
                let (outcome, dir) = r?;
                match dir.and_then(|d| failed.get(&d)) {
                    Some(e) => Err(SinkError(format!("{name}: {e}"))),
                    None => Ok(outcome),
                }
            })
            .collect()
    }

    /// Writes and links one file; the folder to sync before it counts as delivered.
    fn link_in(&self, name: &str, bytes: &[u8]) -> Result<(PutOutcome, Option<PathBuf>), SinkError> {
        use std::io::Write;
        let err = |e: std::io::Error| SinkError(format!("{name}: {e}"));
        let path = self.path_of(name)?;
        let dir = path.parent().ok_or_else(|| SinkError(format!("{name}: no folder")))?;
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(err)?;
            // A new folder is durable once its parents' entries are: sync each up to the root.
            let mut up = dir.parent();
            while let Some(p) = up {
                sync_dir(p).map_err(err)?;
                if p == self.root || !p.starts_with(&self.root) {
                    break;
                }
                up = p.parent();
            }
        }
        let tmp_dir = self.root.join(".tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(err)?;
        let tmp = tmp_dir.join(format!("{}.{}", ulid::Ulid::new(), std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok((PutOutcome::Created, Some(dir.to_path_buf()))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let existing = std::fs::read(&path).map_err(err)?;
                // Already there: perhaps linked by an attempt that died before syncing its
                // folder, so the folder is synced before this counts as delivered.
                Ok(if existing == bytes { (PutOutcome::AlreadyThere, Some(dir.to_path_buf())) } else { (PutOutcome::Different(existing), None) })
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Deletes the temporary files in `.tmp` last modified before `started`: what writes cut
    /// short by a crash or a SIGKILL left there. Meant for start-up, before the dispatcher runs:
    /// the folder belongs to the one instance whose data dir holds it (the store's lock keeps a
    /// second process off that data dir), and only its dispatcher writes here, so such a file
    /// has no writer left. Files dated from `started` on are kept, whatever wrote them. Even a
    /// file still being written could go without harm: a file is delivered only by linking its
    /// temporary file, fully written and synced, under its name, so the writer's link would fail
    /// and its attempt be retried. How many files were deleted.
    pub fn clear_leftovers(&self, started: std::time::SystemTime) -> Result<usize, SinkError> {
        let dir = self.root.join(".tmp");
        let err = |e: std::io::Error| SinkError(format!("{}: {e}", dir.display()));
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(err(e)),
        };
        let mut cleared = 0;
        for entry in entries {
            let entry = entry.map_err(err)?;
            let meta = entry.metadata().map_err(err)?;
            if !meta.is_file() || meta.modified().map_err(err)? >= started {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => cleared += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(cleared)
    }

    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, SinkError> {
        match std::fs::read(self.path_of(name)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SinkError(format!("{name}: {e}"))),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
