//! Listing a rule folder, for every loader of rule files (the rule set and the incoming
//! descriptions).

use std::path::{Path, PathBuf};

/// The files of a folder with this extension, in name order (every loader of rule files).
pub(crate) fn sorted_files(dir: &Path, ext: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir)?.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext)).collect();
    out.sort();
    Ok(out)
}
