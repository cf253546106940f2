//! `madvise-dontneed`, `madvise-free`, `madvise-remove`, `madvise-pageout`, `madvise-cold`:
//! one `madvise(2)` each, over a random aligned range of the pinned mapping.
//!
//! DONTNEED drops the pages of a private mapping (the next touch maps zeros or the file's
//! page) and only unmaps those of a shared one; FREE lets the kernel drop private anonymous
//! pages lazily; REMOVE punches the range out of the shmem or file behind a shared mapping;
//! PAGEOUT and COLD ask reclaim to write the pages out or age them. Which of these may leave
//! a pin and the mapping on different pages is for the oracles and the expectations.

use rand::RngCore;

use super::sys::{madvise, Advice};
use super::{err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget};
use crate::backing::MapKind;

pub struct Madvise(pub LayoutKind);

impl Madvise {
    fn advice(&self) -> (Advice, &'static str) {
        match self.0 {
            LayoutKind::MadviseDontneed => (Advice::DontNeed, "madvise(MADV_DONTNEED)"),
            LayoutKind::MadviseFree => (Advice::Free, "madvise(MADV_FREE)"),
            LayoutKind::MadviseRemove => (Advice::Remove, "madvise(MADV_REMOVE)"),
            LayoutKind::MadvisePageout => (Advice::PageOut, "madvise(MADV_PAGEOUT)"),
            LayoutKind::MadviseCold => (Advice::Cold, "madvise(MADV_COLD)"),
            other => unreachable!("not a madvise operation: {other}"),
        }
    }

    /// Whether what the process reads in the range may change: dropped private pages read
    /// as zeros (or the file), a removed range as zeros.
    fn drops_contents(&self, map: MapKind) -> bool {
        match self.0 {
            LayoutKind::MadviseDontneed | LayoutKind::MadviseFree => map == MapKind::Private,
            LayoutKind::MadviseRemove => true,
            _ => false,
        }
    }
}

impl LayoutOp for Madvise {
    fn kind(&self) -> LayoutKind {
        self.0
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn unavailable(&self, t: &LayoutTarget) -> Option<String> {
        match self.0 {
            LayoutKind::MadviseFree if !t.private_anon() || t.hugetlb => Some(
                "MADV_FREE applies to private anonymous memory only (not hugetlb, shmem or files)"
                    .into(),
            ),
            LayoutKind::MadviseRemove if t.map == MapKind::Private => Some(
                "MADV_REMOVE applies to shared mappings only (it punches the range out of the shmem or file behind them)"
                    .into(),
            ),
            LayoutKind::MadvisePageout | LayoutKind::MadviseCold if t.hugetlb => Some(format!(
                "{} does not apply to hugetlb mappings (reclaim never takes hugetlb pages)",
                self.advice().1
            )),
            _ => None,
        }
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
        let (advice, name) = self.advice();
        madvise(t.mapping, off as usize, len as usize, advice).map_err(|e| err(name, e))?;
        Ok(Applied {
            effect: Effect::Remapped {
                offset: off,
                len,
                contents: self.drops_contents(t.map),
            },
            desc: format!("{} {off}+{len}", self.0),
        })
    }
}
