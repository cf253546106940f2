//! The paths a run writes to, checked once where they are named (the command line, the lab
//! guest) and carried as types, so the run neither checks them again nor needs to know what
//! the user called them.

use std::path::{Path, PathBuf};

use anyhow::Result;

use pinstorm_workloads::scratch;

/// A directory pinstorm may create and write into: absolute, without `..`
/// ([`scratch::checked_write_path`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteDir(PathBuf);

impl WriteDir {
    /// Check `path`; `what` names it in the error (`--results (or PINSTORM_RESULTS)`).
    pub fn new(path: &Path, what: &str) -> Result<WriteDir> {
        scratch::checked_write_path(path, what).map(WriteDir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// A directory the user named as scratch (checked where it is named).
pub use pinstorm_workloads::scratch::ScratchDir;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_or_dotted_write_dir_is_refused_with_its_name() {
        let e = WriteDir::new(Path::new("results"), "--results").unwrap_err();
        assert!(format!("{e}").contains("--results"), "{e}");
        assert!(WriteDir::new(Path::new("/tmp/../etc"), "--results").is_err());
        let ok = WriteDir::new(Path::new("/tmp/pinstorm-results"), "--results").unwrap();
        assert_eq!(ok.path(), Path::new("/tmp/pinstorm-results"));
    }

    #[test]
    fn a_system_directory_is_no_scratch_dir() {
        let e = ScratchDir::new(Path::new("/etc"), "--scratch-dir").unwrap_err();
        assert!(format!("{e}").contains("--scratch-dir"), "{e}");
    }
}
