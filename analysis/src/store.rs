//! Writing results: `ROOT/<kernel-release>/<run-id>/result.json`, atomically (write a
//! temporary file in the same directory, fsync, rename over, fsync the directory), so a
//! reader never sees half a file and an interrupted run leaves the last complete state.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::schema::RunResult;

/// Where a run's result goes. `root` must already be checked (absolute, non-empty).
pub fn result_dir(root: &Path, kernel_release: &str, run_id: &str) -> PathBuf {
    // A release string never contains '/', but be safe: it becomes a directory name.
    let k: String = kernel_release
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    root.join(if k.is_empty() {
        "unknown-kernel".into()
    } else {
        k
    })
    .join(run_id)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    File::open(dir).and_then(|d| d.sync_all()).ok();
    Ok(())
}

pub fn write_result(dir: &Path, result: &RunResult) -> Result<PathBuf> {
    let path = dir.join("result.json");
    let mut text = serde_json::to_string_pretty(result).context("serializing the result")?;
    text.push('\n');
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

pub fn read_result(path: &Path) -> Result<RunResult> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    RunResult::from_json(&text).with_context(|| format!("{}", path.display()))
}
