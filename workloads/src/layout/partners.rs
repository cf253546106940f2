//! Partner files: the files next to a pinned file that some layout operations work with
//! (reflink and dedupe need two files on one filesystem). Each operation declares the
//! partners it needs ([`super::LayoutOp::partners`]); [`Partners::prepare`] makes exactly
//! those, once per pinned file, before a storm starts.

use std::os::unix::fs::FileExt;

use super::LayoutKind;
use crate::backing::RegionFile;

/// A file next to the pinned one, on the same filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Partner {
    /// Where reflink-out and dedupe put copies of the pinned file's data: empty, sized like
    /// the pinned file.
    Clone,
    /// What reflink-in copies over the pinned file: plain fill, sized like the pinned file.
    Donor,
}

impl Partner {
    pub const ALL: &'static [Partner] = &[Partner::Clone, Partner::Donor];

    /// How results and file names call it (`clone-3`, `region-3 (clone)`).
    pub fn name(self) -> &'static str {
        match self {
            Partner::Clone => "clone",
            Partner::Donor => "donor",
        }
    }

    /// The byte the file is filled with, or `None` for a sparse file of the full size.
    fn fill(self) -> Option<u8> {
        match self {
            Partner::Clone => None,
            Partner::Donor => Some(0xd0),
        }
    }

    /// Whether the partner may legitimately hold the pinned file's own data (a clone does,
    /// wherever it moved); otherwise any data the device wrote found in it came from where
    /// it does not belong.
    pub fn holds_copies(self) -> bool {
        match self {
            Partner::Clone => true,
            Partner::Donor => false,
        }
    }
}

/// The partner files of one pinned file, or why they could not be made.
#[derive(Default)]
pub struct Partners {
    files: Vec<(Partner, RegionFile)>,
    missing: Option<String>,
}

impl Partners {
    /// The partners the operations `ops` need next to `file` (the `i`-th pinned file of
    /// `size` bytes on filesystem `fs`). Nothing when no operation needs one; a memfd has no
    /// directory to put them in, which the operations report themselves.
    pub fn prepare(file: &RegionFile, fs: &str, i: usize, size: u64, ops: &[LayoutKind]) -> Self {
        let needed: Vec<Partner> = Partner::ALL
            .iter()
            .copied()
            .filter(|p| ops.iter().any(|k| k.op().partners().contains(p)))
            .collect();
        let mut out = Partners::default();
        if needed.is_empty() {
            return out;
        }
        if fs == "hugetlbfs" {
            out.missing = Some(
                "hugetlbfs has no write(2) to prepare partner files with, and no reflink".into(),
            );
            return out;
        }
        for p in needed {
            let name = format!("{}-{i}", p.name());
            match file.sibling(&name) {
                Ok(Some(f)) => {
                    let r = match p.fill() {
                        Some(b) => f.file().write_all_at(&vec![b; size as usize], 0),
                        None => f.file().set_len(size),
                    };
                    match r {
                        Ok(()) => out.files.push((p, f)),
                        Err(e) => {
                            out.missing = Some(format!("preparing the partner file {name}: {e}"))
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => out.missing = Some(format!("creating the partner file {name}: {e:#}")),
            }
        }
        out
    }

    pub fn get(&self, p: Partner) -> Option<&RegionFile> {
        self.files.iter().find(|(q, _)| *q == p).map(|(_, f)| f)
    }

    /// Every partner made, in [`Partner::ALL`] order.
    pub fn files(&self) -> impl Iterator<Item = (Partner, &RegionFile)> {
        self.files.iter().map(|(p, f)| (*p, f))
    }

    /// Why an operation's partner is missing.
    pub fn missing(&self) -> String {
        self.missing
            .clone()
            .unwrap_or_else(|| "the pinned file has no directory for a partner file (memfd); reflink and dedupe need two files on one filesystem".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::{Access, Backing, BackingKind, MapKind, Region, RegionSpec, SetupEnv};
    use crate::layout::LayoutTarget;
    use crate::scratch::ScratchRoot;
    use crate::units::Size;

    const SIZE: u64 = 64 << 10;

    fn region(backing: &dyn Backing) -> Region {
        backing
            .region(&RegionSpec {
                size: Size(SIZE),
                map: MapKind::Shared,
                access: Access::Rw,
            })
            .unwrap()
    }

    fn declaring(p: Partner) -> Vec<LayoutKind> {
        LayoutKind::ALL
            .iter()
            .copied()
            .filter(|k| k.op().partners().contains(&p))
            .collect()
    }

    /// In a directory, each partner is made exactly when an operation of the storm declares
    /// it: a sparse clone of the pinned file's size, a donor of that size filled with its
    /// byte; none at all for operations that declare none.
    #[test]
    fn partners_are_made_only_for_the_operations_that_declare_them() {
        let base = std::env::temp_dir().join(format!("pinstorm-partners-{}", std::process::id()));
        let user = base.join("user");
        std::fs::create_dir_all(&user).unwrap();
        let root = ScratchRoot::open(&base.join("root")).unwrap();
        let run = root.new_run("partners").unwrap();
        let env = SetupEnv {
            scratch_dir: Some(crate::scratch::ScratchDir::new(&user, "--scratch-dir").unwrap()),
            ..SetupEnv::default()
        };
        let backing = BackingKind::ScratchDir.setup(&env, &run).unwrap();
        let pinned = region(backing.as_ref());
        let file = pinned.file.as_ref().unwrap();

        let none = Partners::prepare(file, "ext4", 0, SIZE, &[LayoutKind::Truncate]);
        assert_eq!(none.files().count(), 0);

        let clones = declaring(Partner::Clone);
        assert!(!clones.is_empty() && !clones.contains(&LayoutKind::ReflinkRangeIn));
        let p = Partners::prepare(file, "ext4", 1, SIZE, &clones);
        let made: Vec<_> = p.files().map(|(k, _)| k).collect();
        assert_eq!(made, [Partner::Clone]);
        let clone = p.get(Partner::Clone).unwrap().file();
        assert_eq!(clone.metadata().unwrap().len(), SIZE);

        let p = Partners::prepare(file, "ext4", 2, SIZE, LayoutKind::ALL);
        let made: Vec<_> = p.files().map(|(k, _)| k).collect();
        assert_eq!(made, Partner::ALL);
        let mut donor = vec![0u8; SIZE as usize];
        p.get(Partner::Donor)
            .unwrap()
            .file()
            .read_exact_at(&mut donor, 0)
            .unwrap();
        assert!(donor.iter().all(|b| *b == 0xd0));

        drop((p, pinned, backing, run, root));
        let _ = std::fs::remove_dir_all(&base);
    }

    /// An operation whose declared partner could not be made does not run and says why (a
    /// memfd has no directory; hugetlbfs cannot be written); one that declares none runs.
    #[test]
    fn an_operation_without_its_declared_partner_cannot_run_and_says_why() {
        let dir = std::env::temp_dir().join(format!("pinstorm-no-partner-{}", std::process::id()));
        let root = ScratchRoot::open(&dir).unwrap();
        let run = root.new_run("no-partner").unwrap();
        let memfd = BackingKind::Memfd
            .setup(&SetupEnv::default(), &run)
            .unwrap();
        let pinned = region(memfd.as_ref());
        let file = pinned.file.as_ref().unwrap();
        for (fs, why) in [("tmpfs", "memfd"), ("hugetlbfs", "hugetlbfs")] {
            let partners = Partners::prepare(file, fs, 0, SIZE, LayoutKind::ALL);
            assert_eq!(partners.files().count(), 0);
            let target = LayoutTarget {
                file: Some(file),
                mapping: &pinned.mapping,
                map: pinned.spec.map,
                hugetlb: false,
                size: SIZE,
                align: 4096,
                partners: &partners,
                cpu_access: true,
                env: &crate::layout::OpEnv::default(),
            };
            for k in LayoutKind::ALL {
                let op = k.op();
                match op.cannot_run(&target) {
                    Some(r) if !op.partners().is_empty() => {
                        assert!(r.contains(why), "{k} on {fs}: {r}")
                    }
                    // Memory operations may not apply here for reasons of their own.
                    Some(r) => assert_eq!(
                        op.requires()
                            .iter()
                            .find_map(|q| q.unmet(target.env))
                            .or_else(|| op.unavailable(&target)),
                        Some(r),
                        "{k}"
                    ),
                    None => assert!(op.partners().is_empty(), "{k} ran without its partner"),
                }
            }
        }
        drop((pinned, memfd, run, root));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
