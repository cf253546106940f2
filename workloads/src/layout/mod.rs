//! Layout operations: what changes a file's block map under a pin.
//!
//! One [`LayoutOp`] per kind, in small modules: `truncate` (shrink, then re-extend),
//! `fallocate` (punch hole, zero range, collapse range, insert range), `reflink` (FICLONE and
//! FICLONERANGE out of the pinned file, FICLONERANGE into it) and `dedupe` (FIDEDUPERANGE).
//! Each picks its aligned range from the caller's seeded RNG, so a seed replays the same
//! sequence, and reports what it did to the file's contents ([`Effect`]) for the oracles.
//!
//! Operations only ever take a [`RegionFile`]: a file a backing created for this run. An
//! operation that works with a second file declares it ([`LayoutOp::partners`]); the storm
//! makes those partners ([`Partners::prepare`]) and never names an operation. Adding an
//! operation touches its module and this module's registry ([`LayoutKind`]).

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::backing::RegionFile;
use crate::sys::Errno;

mod dedupe;
mod fallocate;
mod partners;
mod reflink;
mod truncate;

pub use partners::{Partner, Partners};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutKind {
    Truncate,
    PunchHole,
    ZeroRange,
    CollapseRange,
    InsertRange,
    ReflinkOut,
    ReflinkRangeOut,
    ReflinkRangeIn,
    Dedupe,
}

impl LayoutKind {
    pub const ALL: &'static [LayoutKind] = &[
        LayoutKind::Truncate,
        LayoutKind::PunchHole,
        LayoutKind::ZeroRange,
        LayoutKind::CollapseRange,
        LayoutKind::InsertRange,
        LayoutKind::ReflinkOut,
        LayoutKind::ReflinkRangeOut,
        LayoutKind::ReflinkRangeIn,
        LayoutKind::Dedupe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LayoutKind::Truncate => "truncate",
            LayoutKind::PunchHole => "punch-hole",
            LayoutKind::ZeroRange => "zero-range",
            LayoutKind::CollapseRange => "collapse-range",
            LayoutKind::InsertRange => "insert-range",
            LayoutKind::ReflinkOut => "reflink-out",
            LayoutKind::ReflinkRangeOut => "reflink-range-out",
            LayoutKind::ReflinkRangeIn => "reflink-range-in",
            LayoutKind::Dedupe => "dedupe",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            LayoutKind::Truncate => {
                "ftruncate to 0 or a random aligned size, then back to full size"
            }
            LayoutKind::PunchHole => "fallocate(PUNCH_HOLE|KEEP_SIZE) of a random aligned range",
            LayoutKind::ZeroRange => "fallocate(ZERO_RANGE|KEEP_SIZE) of a random aligned range",
            LayoutKind::CollapseRange => "fallocate(COLLAPSE_RANGE), then re-extend to full size",
            LayoutKind::InsertRange => "fallocate(INSERT_RANGE), then truncate back to full size",
            LayoutKind::ReflinkOut => "FICLONE the whole pinned file into a clone file",
            LayoutKind::ReflinkRangeOut => {
                "FICLONERANGE a range of the pinned file into a clone file"
            }
            LayoutKind::ReflinkRangeIn => {
                "FICLONERANGE a range of a donor file over the pinned file"
            }
            LayoutKind::Dedupe => {
                "FIDEDUPERANGE a range of the pinned file against an identical copy"
            }
        }
    }

    pub fn op(self) -> Box<dyn LayoutOp> {
        match self {
            LayoutKind::Truncate => Box::new(truncate::Truncate),
            LayoutKind::PunchHole
            | LayoutKind::ZeroRange
            | LayoutKind::CollapseRange
            | LayoutKind::InsertRange => Box::new(fallocate::Fallocate(self)),
            LayoutKind::ReflinkOut | LayoutKind::ReflinkRangeOut | LayoutKind::ReflinkRangeIn => {
                Box::new(reflink::Reflink(self))
            }
            LayoutKind::Dedupe => Box::new(dedupe::Dedupe),
        }
    }

    pub fn parse(name: &str) -> Result<LayoutKind, String> {
        LayoutKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = LayoutKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown layout operation {name:?} (known: {})",
                    known.join(", ")
                )
            })
    }
}

impl std::fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The file to change, and its partners on the same filesystem.
pub struct LayoutTarget<'a> {
    pub file: &'a RegionFile,
    /// The file's full size; operations that shrink or grow it put this size back.
    pub size: u64,
    /// Ranges are multiples of this (the backing's page size, at least the fs block size).
    pub align: u64,
    /// The partner files made for the operations that declared them.
    pub partners: &'a Partners,
}

impl LayoutTarget<'_> {
    /// A partner the operation declared; [`LayoutOp::cannot_run`] has checked it is there.
    pub(crate) fn partner(&self, p: Partner) -> &RegionFile {
        self.partners
            .get(p)
            .expect("a declared partner, checked by cannot_run()")
    }
}

/// What an operation did to the pinned file's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// These bytes no longer hold what they held: they read as zeros or the donor's fill.
    Invalidated { offset: u64, len: u64 },
    /// Everything from `offset` on moved (collapse / insert) or was re-created.
    Shifted { offset: u64 },
    /// The contents are unchanged; the blocks may now be shared with another file.
    Shared { offset: u64, len: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub effect: Effect,
    /// What was done, e.g. `punch 8192+4096`.
    pub desc: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{op}: {}", errno.name())]
pub struct LayoutError {
    pub op: &'static str,
    pub errno: Errno,
    /// What the operation had already done when it failed (e.g. shrunk but not re-extended).
    pub partial: Option<Effect>,
}

impl LayoutError {
    /// The filesystem or kernel does not have this operation at all: report `notrun` once
    /// rather than an error storm. (EINVAL is not here: it is also a bad range.)
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self.errno.name().as_str(),
            "EOPNOTSUPP" | "ENOTTY" | "ENOSYS" | "EXDEV" | "ENOTSUP"
        )
    }
}

pub trait LayoutOp: Send + Sync {
    fn kind(&self) -> LayoutKind;
    /// The files next to the pinned one this operation works with, made before the storm.
    fn partners(&self) -> &'static [Partner] {
        &[]
    }
    /// Why this operation cannot run on `target` at all, if so (a file too small, ...).
    fn unavailable(&self, _target: &LayoutTarget) -> Option<String> {
        None
    }
    fn apply(&self, target: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError>;

    /// Why this operation cannot run on `target`: a declared partner is missing, or
    /// [`LayoutOp::unavailable`]. Checked before every [`LayoutOp::apply`].
    fn cannot_run(&self, target: &LayoutTarget) -> Option<String> {
        if self
            .partners()
            .iter()
            .any(|p| target.partners.get(*p).is_none())
        {
            return Some(target.partners.missing());
        }
        self.unavailable(target)
    }
}

pub(crate) fn err(op: &'static str, e: impl Into<Errno>) -> LayoutError {
    LayoutError {
        op,
        errno: e.into(),
        partial: None,
    }
}

/// A random aligned range inside `[0, size)`: `offset + len <= size - tail` where `tail` is
/// the number of aligned units that must stay after the range (collapse and insert may not
/// reach end of file).
pub fn pick_range(rng: &mut dyn RngCore, size: u64, align: u64, tail: u64) -> Option<(u64, u64)> {
    let units = size / align;
    if units <= tail {
        return None;
    }
    let usable = units - tail;
    let start = rng.next_u64() % usable;
    let len = 1 + rng.next_u64() % (usable - start);
    Some((start * align, len * align))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ranges_stay_aligned_and_inside_the_file() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let (o, l) = pick_range(&mut rng, 1 << 20, 4096, 0).unwrap();
            assert!(o % 4096 == 0 && l % 4096 == 0 && l > 0 && o + l <= 1 << 20);
            let (o, l) = pick_range(&mut rng, 1 << 20, 4096, 1).unwrap();
            assert!(o + l < 1 << 20);
        }
        assert_eq!(pick_range(&mut rng, 4096, 4096, 1), None);
    }

    #[test]
    fn the_same_seed_picks_the_same_ranges() {
        let a: Vec<_> = {
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(42);
            (0..20)
                .map(|_| pick_range(&mut r, 1 << 21, 4096, 0))
                .collect()
        };
        let b: Vec<_> = {
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(42);
            (0..20)
                .map(|_| pick_range(&mut r, 1 << 21, 4096, 0))
                .collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn names_round_trip() {
        for k in LayoutKind::ALL {
            assert_eq!(LayoutKind::parse(k.name()), Ok(*k));
        }
    }
}
