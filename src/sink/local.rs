//! The local object store: a folder standing in for the DTN bucket, create-only by hard links.
//!
//! An object `a/b/c` is the file `<root>/a/b/c`. A write goes to a temporary file in
//! `<root>/.tmp/`, is fsync'd, then hard-linked under its name (a link fails if the name exists,
//! atomically) and the folder fsync'd; `.tmp/` is not an object and is never listed. Every call
//! runs in a blocking task. The folder must be one file system (links do not cross them).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::sink::{Got, Listed, Listing, ObjectStore, PutOutcome, SinkError};

/// Files written to the folder in one batch (one folder fsync for all of them).
const LOCAL_BATCH: usize = 64;

/// The folder of temporary files, under the root.
const TMP: &str = ".tmp";

/// A folder standing in for the DTN bucket: `<data-dir>/dtn/<object name>`, with its temporary
/// files in `<data-dir>/dtn/.tmp/` (cleared of a crash's leftovers at start,
/// [`LocalSink::clear_leftovers`]).
#[derive(Debug, Clone)]
pub(crate) struct LocalSink {
    root: PathBuf,
}

impl LocalSink {
    pub fn new(root: impl Into<PathBuf>) -> LocalSink {
        LocalSink { root: root.into() }
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, SinkError> {
        if name.split('/').any(|p| p.is_empty() || p == "." || p == "..") || name == TMP || name.starts_with(".tmp/") {
            return Err(SinkError::UnsafeName(name.to_string()));
        }
        Ok(self.root.join(name))
    }

    /// Runs `f` on a clone of this store in a blocking task.
    async fn blocking<R: Send + 'static>(&self, f: impl FnOnce(LocalSink) -> Result<R, SinkError> + Send + 'static) -> Result<R, SinkError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me)).await.map_err(|e| SinkError::Task(e.to_string()))?
    }

    /// Create-only: written to a temporary file, fsync'd, then hard-linked into place, and the
    /// folder fsync'd.
    fn put_one(&self, name: &str, bytes: &[u8]) -> Result<PutOutcome, SinkError> {
        let (outcome, dir) = self.link_in(name, bytes)?;
        if let Some(dir) = dir {
            sync_dir(&dir).map_err(SinkError::io(name))?;
        }
        Ok(outcome)
    }

    /// [`LocalSink::put_one`] for several files, with one fsync per folder for all of them:
    /// no file counts as created until its folder is synced.
    fn put_many(&self, items: &[(String, Vec<u8>)]) -> Vec<Result<PutOutcome, SinkError>> {
        let mut linked: Vec<Result<(PutOutcome, Option<PathBuf>), SinkError>> = items.iter().map(|(name, bytes)| self.link_in(name, bytes)).collect();
        let mut dirs: Vec<&PathBuf> = linked.iter().filter_map(|r| r.as_ref().ok().and_then(|(_, d)| d.as_ref())).collect();
        dirs.sort();
        dirs.dedup();
        let mut failed: HashMap<PathBuf, std::io::Error> = dirs.into_iter().filter_map(|d| sync_dir(d).err().map(|e| (d.clone(), e))).collect();
        linked
            .drain(..)
            .zip(items)
            .map(|(r, (name, _))| {
                let (outcome, dir) = r?;
                match dir.and_then(|d| failed.get_mut(&d)) {
                    Some(e) => Err(SinkError::Io { name: name.clone(), source: std::io::Error::new(e.kind(), e.to_string()) }),
                    None => Ok(outcome),
                }
            })
            .collect()
    }

    /// Creates the folder of `path` if missing, durably: each new level's parent is synced, up
    /// to the root.
    fn make_dir_of(&self, name: &str, path: &Path) -> Result<PathBuf, SinkError> {
        let err = SinkError::io(name);
        let dir = path.parent().ok_or_else(|| SinkError::UnsafeName(name.to_string()))?;
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(err)?;
            let mut up = dir.parent();
            while let Some(p) = up {
                sync_dir(p).map_err(SinkError::io(name))?;
                if p == self.root || !p.starts_with(&self.root) {
                    break;
                }
                up = p.parent();
            }
        }
        Ok(dir.to_path_buf())
    }

    /// A new temporary file's path in `.tmp/`.
    fn tmp_path(&self, name: &str) -> Result<PathBuf, SinkError> {
        let tmp_dir = self.root.join(TMP);
        std::fs::create_dir_all(&tmp_dir).map_err(SinkError::io(name))?;
        Ok(tmp_dir.join(format!("{}.{}", ulid::Ulid::new(), std::process::id())))
    }

    /// Writes and links one file; the folder to sync before it counts as delivered.
    fn link_in(&self, name: &str, bytes: &[u8]) -> Result<(PutOutcome, Option<PathBuf>), SinkError> {
        let err = SinkError::io(name);
        let path = self.path_of(name)?;
        let dir = self.make_dir_of(name, &path)?;
        let tmp = self.tmp_path(name)?;
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok((PutOutcome::Created, Some(dir))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let existing = std::fs::read(&path).map_err(SinkError::io(name))?;
                // Already there: perhaps linked by an attempt that died before syncing its
                // folder, so the folder is synced before this counts as delivered.
                Ok(if existing == bytes { (PutOutcome::AlreadyThere, Some(dir)) } else { (PutOutcome::Different(existing), None) })
            }
            Err(e) => Err(err(e)),
        }
    }

    fn get_one(&self, name: &str, max: u64) -> Result<Got, SinkError> {
        let path = self.path_of(name)?;
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Got::Missing),
            Err(e) => return Err(SinkError::io(name)(e)),
        };
        // The identity of the file opened, so the bytes and the identity go together.
        let meta = f.metadata().map_err(SinkError::io(name))?;
        if !meta.is_file() {
            return Err(SinkError::NotAFile { name: name.to_string() });
        }
        let etag = Some(identity(&meta));
        if meta.len() > max {
            return Ok(Got::TooLarge { size: meta.len(), etag });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        (&mut f).take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(SinkError::io(name))?;
        if bytes.len() as u64 > max {
            // Grown while it was read (written to in place): its identity changed too.
            let size = f.metadata().map_or(bytes.len() as u64, |m| m.len());
            return Ok(Got::TooLarge { size, etag: None });
        }
        Ok(Got::Bytes { bytes, etag })
    }

    fn list_all(&self, under: &str, how: &Listing) -> Result<Vec<Listed>, SinkError> {
        // `under` is a folder part (up to its last `/`) and the start of the names in it.
        let (folder, start) = match under.rfind('/') {
            Some(i) => under.split_at(i + 1),
            None => ("", under),
        };
        let dir = match folder.strip_suffix('/') {
            Some(f) => self.path_of(f)?,
            None => self.root.clone(),
        };
        let mut out = Vec::new();
        self.walk(&dir, folder, start, how.shallow, &mut out)?;
        if let Some(after) = &how.after {
            out.retain(|o| o.name.as_str() > after.as_str());
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The files of `dir` whose names start with `start`, named `<folder><name>`; with
    /// `!shallow`, those of its folders too. A missing folder holds nothing.
    fn walk(&self, dir: &Path, folder: &str, start: &str, shallow: bool, out: &mut Vec<Listed>) -> Result<(), SinkError> {
        let err = SinkError::io(folder);
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => return Ok(()),
            Err(e) => return Err(err(e)),
        };
        for entry in entries {
            let entry = entry.map_err(SinkError::io(folder))?;
            let Ok(file) = entry.file_name().into_string() else {
                tracing::warn!(folder = %dir.display(), file = ?entry.file_name(), "file name is not UTF-8; not an object, left alone");
                continue;
            };
            if !file.starts_with(start) || (folder.is_empty() && file == TMP) {
                continue;
            }
            let name = format!("{folder}{file}");
            let kind = match entry.file_type() {
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SinkError::io(&name)(e)),
            };
            if kind.is_file() {
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(SinkError::io(&name)(e)),
                };
                out.push(Listed { name, size: meta.len(), etag: Some(identity(&meta)) });
            } else if kind.is_dir() && !shallow {
                self.walk(&entry.path(), &format!("{name}/"), "", false, out)?;
            }
        }
        Ok(())
    }

    fn head_one(&self, name: &str) -> Result<Option<Listed>, SinkError> {
        match std::fs::metadata(self.path_of(name)?) {
            Ok(m) if m.is_file() => Ok(Some(Listed { name: name.to_string(), size: m.len(), etag: Some(identity(&m)) })),
            Ok(_) => Err(SinkError::NotAFile { name: name.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SinkError::io(name)(e)),
        }
    }

    /// A hard link from `from` to `to` (create-only, atomic), then `to`'s folder synced.
    fn copy_one(&self, from: &str, to: &str) -> Result<bool, SinkError> {
        let (src, dst) = (self.path_of(from)?, self.path_of(to)?);
        let dir = self.make_dir_of(to, &dst)?;
        match std::fs::hard_link(&src, &dst) {
            Ok(()) => {
                sync_dir(&dir).map_err(SinkError::io(to))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !src.exists() => Err(SinkError::NoSource(from.to_string())),
            Err(e) => Err(SinkError::io(to)(e)),
        }
    }

    /// Removes the file, only while its identity is still `etag` when one is given; its folder
    /// is synced. As with a bucket that does not check `If-Match` itself, a file renamed into
    /// place between the check and the removal would go too.
    fn delete_one(&self, name: &str, etag: Option<&str>) -> Result<(), SinkError> {
        let path = self.path_of(name)?;
        if let Some(etag) = etag {
            match std::fs::metadata(&path) {
                Ok(m) if identity(&m) != etag => return Err(SinkError::Replaced(name.to_string())),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(SinkError::io(name)(e)),
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => match path.parent() {
                Some(dir) => sync_dir(dir).map_err(SinkError::io(name)),
                None => Ok(()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SinkError::io(name)(e)),
        }
    }

    /// Deletes the temporary files in `.tmp` last modified before `started`: what writes cut
    /// short by a crash or a SIGKILL left there. Meant for start-up, before the dispatcher and
    /// the inbound poller run: the folder belongs to the one instance whose data dir holds it
    /// (the store's lock keeps a second process off that data dir), and only those two write
    /// here, so such a file has no writer left. Files dated from `started` on are kept, whatever
    /// wrote them. Even a file still being written could go without harm: a file is written only
    /// by linking its temporary file, fully written and synced, under its name, so the writer's
    /// link would fail and its attempt be retried. How many files were deleted.
    pub(crate) fn clear_leftovers(&self, started: std::time::SystemTime) -> Result<usize, SinkError> {
        let dir = self.root.join(TMP);
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(SinkError::io(TMP)(e)),
        };
        let mut cleared = 0;
        for entry in entries {
            let entry = entry.map_err(SinkError::io(TMP))?;
            let meta = entry.metadata().map_err(SinkError::io(TMP))?;
            if !meta.is_file() || meta.modified().map_err(SinkError::io(TMP))? >= started {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => cleared += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SinkError::io(TMP)(e)),
            }
        }
        Ok(cleared)
    }
}

impl ObjectStore for LocalSink {
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<PutOutcome, SinkError> {
        let name = name.to_string();
        self.blocking(move |me| me.put_one(&name, &bytes)).await
    }

    async fn put_all<T: Send + 'static>(&self, items: Vec<(T, String, Vec<u8>)>) -> Vec<(T, Result<PutOutcome, SinkError>)> {
        let me = self.clone();
        let (tags, files): (Vec<T>, Vec<(String, Vec<u8>)>) = items.into_iter().map(|(t, n, b)| (t, (n, b))).unzip();
        let n = files.len();
        let results = match tokio::task::spawn_blocking(move || me.put_many(&files)).await {
            Ok(r) => r,
            Err(e) => (0..n).map(|_| Err(SinkError::Task(e.to_string()))).collect(),
        };
        tags.into_iter().zip(results).collect()
    }

    fn batch_size(&self, concurrency: usize) -> usize {
        LOCAL_BATCH.max(concurrency)
    }

    async fn get(&self, name: &str, max: u64) -> Result<Got, SinkError> {
        let name = name.to_string();
        self.blocking(move |me| me.get_one(&name, max)).await
    }

    async fn list(&self, under: &str, how: Listing) -> Result<Vec<Listed>, SinkError> {
        let under = under.to_string();
        self.blocking(move |me| me.list_all(&under, &how)).await
    }

    async fn head(&self, name: &str) -> Result<Option<Listed>, SinkError> {
        let name = name.to_string();
        self.blocking(move |me| me.head_one(&name)).await
    }

    async fn copy_if_absent(&self, from: &str, to: &str) -> Result<bool, SinkError> {
        let (from, to) = (from.to_string(), to.to_string());
        self.blocking(move |me| me.copy_one(&from, &to)).await
    }

    async fn delete(&self, name: &str, etag: Option<&str>) -> Result<(), SinkError> {
        let (name, etag) = (name.to_string(), etag.map(str::to_string));
        self.blocking(move |me| me.delete_one(&name, etag.as_deref())).await
    }

    fn location(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }
}

/// What identifies a file's content without reading it: it changes when the file is replaced
/// (another inode) or written to (size, modification time).
fn identity(meta: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        format!("{:x}-{:x}-{:x}-{}.{:09}", meta.dev(), meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec())
    }
    #[cfg(not(unix))]
    {
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
        format!("{:x}-{}.{:09}", meta.len(), modified.as_secs(), modified.subsec_nanos())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn store(tag: &str) -> (LocalSink, PathBuf) {
        let root = std::env::temp_dir().join(format!("flowgate-local-{tag}-{}", ulid::Ulid::new()));
        (LocalSink::new(&root), root)
    }

    fn bytes_of(got: Got) -> Vec<u8> {
        match got {
            Got::Bytes { bytes, .. } => bytes,
            other => panic!("not read: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_put_is_create_only_and_tells_the_same_bytes_from_others() {
        let (s, root) = store("put");
        assert_eq!(s.put("in/a.usr", b"one".to_vec()).await.unwrap(), PutOutcome::Created);
        assert_eq!(s.put("in/a.usr", b"one".to_vec()).await.unwrap(), PutOutcome::AlreadyThere);
        assert_eq!(s.put("in/a.usr", b"two".to_vec()).await.unwrap(), PutOutcome::Different(b"one".to_vec()));
        assert_eq!(std::fs::read(root.join("in/a.usr")).unwrap(), b"one", "never overwritten");
        assert!(matches!(s.put("in/../x", b"x".to_vec()).await, Err(SinkError::UnsafeName(_))));
        assert!(matches!(s.put(".tmp/x", b"x".to_vec()).await, Err(SinkError::UnsafeName(_))));
        assert!(std::fs::read_dir(root.join(".tmp")).unwrap().next().is_none(), "no temporary file left");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_batch_creates_finds_and_refuses_like_single_writes() {
        let (s, root) = store("batch");
        assert_eq!(s.put("out/XA/same.usr", b"one".to_vec()).await.unwrap(), PutOutcome::Created);
        assert_eq!(s.put("out/XA/other.usr", b"first".to_vec()).await.unwrap(), PutOutcome::Created);
        let items: Vec<(usize, String, Vec<u8>)> =
            [("out/XA/new.usr", "a"), ("out/JB/new.usr", "b"), ("out/XA/same.usr", "one"), ("out/XA/other.usr", "second"), ("out/../escape.usr", "x")]
                .iter()
                .enumerate()
                .map(|(i, (n, b))| (i, n.to_string(), b.as_bytes().to_vec()))
                .collect();
        let mut got: Vec<(usize, Result<PutOutcome, String>)> = s.put_all(items).await.into_iter().map(|(i, r)| (i, r.map_err(|e| e.to_string()))).collect();
        got.sort_by_key(|(i, _)| *i);
        assert_eq!(got[0].1, Ok(PutOutcome::Created));
        assert_eq!(got[1].1, Ok(PutOutcome::Created));
        assert_eq!(got[2].1, Ok(PutOutcome::AlreadyThere));
        assert_eq!(got[3].1, Ok(PutOutcome::Different(b"first".to_vec())));
        assert!(got[4].1.as_ref().is_err_and(|e| e.contains("unsafe object name")), "{:?}", got[4]);
        assert_eq!(std::fs::read(root.join("out/JB/new.usr")).unwrap(), b"b");
        assert_eq!(std::fs::read(root.join("out/XA/other.usr")).unwrap(), b"first", "never overwritten");
        assert!(std::fs::read_dir(root.join(".tmp")).unwrap().next().is_none(), "no temporary file left");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_get_reads_up_to_its_bound_and_no_further() {
        let (s, root) = store("get");
        assert_eq!(s.get("in/none.usr", 10).await.unwrap(), Got::Missing);
        s.put("in/ten.usr", b"0123456789".to_vec()).await.unwrap();
        let Got::Bytes { bytes, etag } = s.get("in/ten.usr", 10).await.unwrap() else { panic!("not read at its size") };
        assert_eq!(bytes, b"0123456789");
        let Got::TooLarge { size, etag: large } = s.get("in/ten.usr", 9).await.unwrap() else { panic!("read past the bound") };
        assert_eq!(size, 10);
        assert!(etag.is_some() && etag == large);
        assert_eq!(s.head("in/ten.usr").await.unwrap().unwrap().etag, etag);
        assert_eq!(s.head("in/none.usr").await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_list_is_sorted_by_name_and_keeps_to_its_prefix() {
        let (s, root) = store("list");
        for name in ["in/b.usr", "in/a.usr", "in/processed/a.usr", "in/ledger/2.json", "in/ledger/1.json", "out/X/c.usr", "inbox.usr"] {
            s.put(name, name.as_bytes().to_vec()).await.unwrap();
        }
        let names = |l: Vec<Listed>| l.into_iter().map(|o| o.name).collect::<Vec<_>>();
        assert_eq!(names(s.list("in/", Listing { shallow: true, after: None }).await.unwrap()), ["in/a.usr", "in/b.usr"]);
        assert_eq!(
            names(s.list("in/", Listing::default()).await.unwrap()),
            ["in/a.usr", "in/b.usr", "in/ledger/1.json", "in/ledger/2.json", "in/processed/a.usr"]
        );
        assert_eq!(names(s.list("in/ledger/", Listing { shallow: true, after: Some("in/ledger/1.json".into()) }).await.unwrap()), ["in/ledger/2.json"]);
        assert_eq!(names(s.list("in", Listing { shallow: true, after: None }).await.unwrap()), ["inbox.usr"]);
        assert_eq!(names(s.list("", Listing::default()).await.unwrap()).len(), 7, "the temporary folder is not listed");
        assert!(s.list("nowhere/", Listing::default()).await.unwrap().is_empty());
        let sized = s.list("in/a", Listing::default()).await.unwrap();
        assert_eq!((sized.len(), sized[0].size), (1, "in/a.usr".len() as u64));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_copy_takes_only_a_free_name() {
        let (s, root) = store("copy");
        s.put("in/a.usr", b"a".to_vec()).await.unwrap();
        s.put("in/b.usr", b"b".to_vec()).await.unwrap();
        assert!(s.copy_if_absent("in/a.usr", "in/processed/a.usr").await.unwrap());
        assert_eq!(bytes_of(s.get("in/processed/a.usr", 10).await.unwrap()), b"a");
        assert!(!s.copy_if_absent("in/b.usr", "in/processed/a.usr").await.unwrap(), "the name is taken");
        assert_eq!(bytes_of(s.get("in/processed/a.usr", 10).await.unwrap()), b"a", "not overwritten");
        assert!(matches!(s.copy_if_absent("in/none.usr", "in/processed/none.usr").await, Err(SinkError::NoSource(_))));
        // The copy outlives its source.
        s.delete("in/a.usr", None).await.unwrap();
        assert_eq!(bytes_of(s.get("in/processed/a.usr", 10).await.unwrap()), b"a");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_conditional_delete_keeps_a_replaced_file() {
        let (s, root) = store("delete");
        s.put("in/a.usr", b"first".to_vec()).await.unwrap();
        let first = s.head("in/a.usr").await.unwrap().unwrap().etag.unwrap();
        // Replaced the way senders write: another file renamed over it.
        std::fs::write(root.join("in/.a.usr.tmp"), b"second").unwrap();
        std::fs::rename(root.join("in/.a.usr.tmp"), root.join("in/a.usr")).unwrap();
        assert!(matches!(s.delete("in/a.usr", Some(&first)).await, Err(SinkError::Replaced(_))));
        assert_eq!(bytes_of(s.get("in/a.usr", 10).await.unwrap()), b"second", "the replacement is kept");
        let second = s.head("in/a.usr").await.unwrap().unwrap().etag.unwrap();
        assert_ne!(first, second);
        s.delete("in/a.usr", Some(&second)).await.unwrap();
        assert_eq!(s.get("in/a.usr", 10).await.unwrap(), Got::Missing);
        s.delete("in/a.usr", Some(&second)).await.unwrap();
        s.delete("in/a.usr", None).await.unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }
}
