//! Layout operations: what changes a file's block map, or the memory behind a mapping, under
//! a pin.
//!
//! One [`LayoutOp`] per kind, in small modules: `truncate` (shrink, then re-extend),
//! `fallocate` (punch hole, zero range, collapse range, insert range), `reflink` (FICLONE and
//! FICLONERANGE out of the pinned file, FICLONERANGE into it) and `dedupe` (FIDEDUPERANGE)
//! change a file; the memory-management operations change what is behind the pinned mapping:
//! `madvise` (DONTNEED, FREE, REMOVE, PAGEOUT, COLD), `fork_cow` (fork, then writes in child
//! and parent), `mremap` (move away and back, grow and shrink), `compact`
//! (vm/compact_memory), `migrate` (move_pages to another node) and `ksm` (MADV_MERGEABLE).
//! Each picks its aligned range from the caller's seeded RNG, so a seed replays the same
//! sequence, and reports what it did ([`Effect`]) for the oracles.
//!
//! Operations only ever take a [`RegionFile`] and a [`Mapping`] a backing created for this
//! run. An operation declares where it applies: whether it needs a file
//! ([`LayoutOp::needs_file`]), the files next to the pinned one it works with
//! ([`LayoutOp::partners`]), whether it cuts the file short ([`LayoutOp::cuts_file`]: then the
//! CPU must not touch the mapping) and why it cannot run on a target
//! ([`LayoutOp::unavailable`]); the storm makes the partners ([`Partners::prepare`]) and never
//! names an operation. Adding an operation touches its module and this module's registry
//! ([`LayoutKind`]). The unsafe calls (madvise, mremap, fork, move_pages) are in `sys`.

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::backing::{MapKind, RegionFile};
use crate::sys::{Errno, Mapping};

mod compact;
mod dedupe;
mod fallocate;
mod fork_cow;
mod hwpoison;
mod ksm;
mod madvise;
mod memory_offline;
mod migrate;
mod mremap;
mod partners;
mod reflink;
mod requires;
mod soft_offline;
#[allow(unsafe_code)]
mod sys;
mod truncate;

pub use partners::{Partner, Partners};
pub use requires::{KmemNode, LabMachine, OpEnv, Requirement};

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
    MadviseDontneed,
    MadviseFree,
    MadviseRemove,
    MadvisePageout,
    MadviseCold,
    ForkCow,
    MremapMove,
    MremapGrow,
    Compact,
    Migrate,
    Ksm,
    Hwpoison,
    SoftOffline,
    MemoryOffline,
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
        LayoutKind::MadviseDontneed,
        LayoutKind::MadviseFree,
        LayoutKind::MadviseRemove,
        LayoutKind::MadvisePageout,
        LayoutKind::MadviseCold,
        LayoutKind::ForkCow,
        LayoutKind::MremapMove,
        LayoutKind::MremapGrow,
        LayoutKind::Compact,
        LayoutKind::Migrate,
        LayoutKind::Ksm,
        LayoutKind::Hwpoison,
        LayoutKind::SoftOffline,
        LayoutKind::MemoryOffline,
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
            LayoutKind::MadviseDontneed => "madvise-dontneed",
            LayoutKind::MadviseFree => "madvise-free",
            LayoutKind::MadviseRemove => "madvise-remove",
            LayoutKind::MadvisePageout => "madvise-pageout",
            LayoutKind::MadviseCold => "madvise-cold",
            LayoutKind::ForkCow => "fork-cow",
            LayoutKind::MremapMove => "mremap-move",
            LayoutKind::MremapGrow => "mremap-grow",
            LayoutKind::Compact => "compact",
            LayoutKind::Migrate => "migrate",
            LayoutKind::Ksm => "ksm",
            LayoutKind::Hwpoison => "hwpoison",
            LayoutKind::SoftOffline => "soft-offline",
            LayoutKind::MemoryOffline => "memory-offline",
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
            LayoutKind::MadviseDontneed => "madvise(MADV_DONTNEED) of a random aligned range",
            LayoutKind::MadviseFree => {
                "madvise(MADV_FREE) of a random aligned range (private anonymous memory)"
            }
            LayoutKind::MadviseRemove => {
                "madvise(MADV_REMOVE) of a random aligned range (shared mappings of shmem)"
            }
            LayoutKind::MadvisePageout => "madvise(MADV_PAGEOUT) of a random aligned range",
            LayoutKind::MadviseCold => "madvise(MADV_COLD) of a random aligned range",
            LayoutKind::ForkCow => {
                "fork; the child writes a random range and exits, the parent writes it too"
            }
            LayoutKind::MremapMove => {
                "mremap the mapping to a reserved address (MREMAP_DONTUNMAP) and back"
            }
            LayoutKind::MremapGrow => {
                "mremap the mapping away, grow it in place to twice its size, shrink it, move it back"
            }
            LayoutKind::Compact => "write 1 to /proc/sys/vm/compact_memory (root)",
            LayoutKind::Migrate => {
                "move_pages(2) a random range to another NUMA node (needs two nodes)"
            }
            LayoutKind::Ksm => {
                "madvise(MADV_MERGEABLE), wait (at most 500 ms) for a full ksmd scan, MADV_UNMERGEABLE (ksmd running)"
            }
            LayoutKind::Hwpoison => {
                "madvise(MADV_HWPOISON) of a random page, then MADV_DONTNEED of it (lab guests only)"
            }
            LayoutKind::SoftOffline => {
                "madvise(MADV_SOFT_OFFLINE) of a random aligned range (lab guests only)"
            }
            LayoutKind::MemoryOffline => {
                "move_pages a random range to the guest's kmem node, take the node's blocks holding it offline (bounded), put them back online (lab guests only)"
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
            LayoutKind::MadviseDontneed
            | LayoutKind::MadviseFree
            | LayoutKind::MadviseRemove
            | LayoutKind::MadvisePageout
            | LayoutKind::MadviseCold => Box::new(madvise::Madvise(self)),
            LayoutKind::ForkCow => Box::new(fork_cow::ForkCow),
            LayoutKind::MremapMove | LayoutKind::MremapGrow => Box::new(mremap::Mremap(self)),
            LayoutKind::Compact => Box::new(compact::Compact),
            LayoutKind::Migrate => Box::new(migrate::Migrate),
            LayoutKind::Ksm => Box::new(ksm::Ksm),
            LayoutKind::Hwpoison => Box::new(hwpoison::Hwpoison),
            LayoutKind::SoftOffline => Box::new(soft_offline::SoftOffline),
            LayoutKind::MemoryOffline => Box::new(memory_offline::MemoryOffline),
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

/// The pinned region to change: its mapping, its file (none for anonymous memory) and the
/// file's partners on the same filesystem.
pub struct LayoutTarget<'a> {
    pub file: Option<&'a RegionFile>,
    /// The pinned mapping (its address and length are what memory operations work on).
    pub mapping: &'a Mapping,
    pub map: MapKind,
    /// Whether the memory comes from the hugetlb pool.
    pub hugetlb: bool,
    /// The file's full size; operations that shrink or grow it put this size back.
    pub size: u64,
    /// Ranges are multiples of this (the backing's page size, at least the fs block size).
    pub align: u64,
    /// The partner files made for the operations that declared them.
    pub partners: &'a Partners,
    /// Whether the CPU may touch the mapping: no operation of the storm cuts the file short
    /// (a page past end of file would SIGBUS).
    pub cpu_access: bool,
    /// What the run offers the operations (lab guest, journal).
    pub env: &'a OpEnv,
}

impl LayoutTarget<'_> {
    /// A partner the operation declared; [`LayoutOp::cannot_run`] has checked it is there.
    pub(crate) fn partner(&self, p: Partner) -> &RegionFile {
        self.partners
            .get(p)
            .expect("a declared partner, checked by cannot_run()")
    }

    /// The file of an operation that declared it needs one ([`LayoutOp::needs_file`]).
    pub(crate) fn file(&self) -> &RegionFile {
        self.file
            .expect("an operation that needs a file, checked by cannot_run()")
    }

    /// Whether the memory is anonymous (no file) and private: plain anonymous pages.
    pub fn private_anon(&self) -> bool {
        self.file.is_none() && self.map == MapKind::Private
    }
}

/// What an operation did to the pinned file's contents or to the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// These bytes no longer hold what they held: they read as zeros or the donor's fill.
    Invalidated { offset: u64, len: u64 },
    /// Everything from `offset` on moved (collapse / insert) or was re-created.
    Shifted { offset: u64 },
    /// The contents are unchanged; the blocks may now be shared with another file.
    Shared { offset: u64, len: u64 },
    /// A memory-management operation worked on the mapping of these bytes: the pages the
    /// process sees there may be other pages now (by the operation's design, or not: that is
    /// for the diverged and moved oracles and the expectations). `contents`: what the
    /// process reads there may have changed too (data dropped or written).
    Remapped {
        offset: u64,
        len: u64,
        contents: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub effect: Effect,
    /// What was done, e.g. `punch 8192+4096`.
    pub desc: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{op}: {}", self.key())]
pub struct LayoutError {
    pub op: &'static str,
    pub errno: Errno,
    /// What the operation had already done when it failed (e.g. shrunk but not re-extended).
    pub partial: Option<Effect>,
    /// Why, where the errno alone does not say and the kernel told (memory-offline: the page
    /// that kept a block online): counted apart, as `EBUSY (cause)`.
    pub cause: Option<String>,
}

impl LayoutError {
    /// How the storm counts this failure: the errno, with its cause when known (the cause
    /// alone for a call that returned 0 and still failed, e.g. with a signal).
    pub fn key(&self) -> String {
        match &self.cause {
            Some(c) if self.errno.0 == 0 => c.clone(),
            Some(c) => format!("{} ({c})", self.errno.name()),
            None => self.errno.name(),
        }
    }
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
    /// What it needs from the machine, from the one list ([`Requirement`]), checked in
    /// order by [`LayoutOp::cannot_run`] before anything about the target.
    fn requires(&self) -> &'static [Requirement] {
        &[]
    }
    /// Whether it leaves pages the CPU must not touch for a while (a poisoned page SIGBUSes
    /// the process that reads it): like [`LayoutOp::cuts_file`], the storm then never reads
    /// or writes the mapping with the CPU.
    fn poisons(&self) -> bool {
        false
    }
    /// Whether it changes a file (anonymous memory has none): the layout operations do,
    /// memory-management operations work on any mapping.
    fn needs_file(&self) -> bool {
        true
    }
    /// Whether it may cut the file short for a while (truncate, collapse): while it may run,
    /// the CPU must never touch the mapping, whose cut pages would SIGBUS.
    fn cuts_file(&self) -> bool {
        false
    }
    /// The files next to the pinned one this operation works with, made before the storm.
    fn partners(&self) -> &'static [Partner] {
        &[]
    }
    /// Why this operation cannot run on `target` at all, if so (a file too small, ...).
    fn unavailable(&self, _target: &LayoutTarget) -> Option<String> {
        None
    }
    fn apply(&self, target: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError>;

    /// Called once per pinned region before the storm starts, nothing pinned yet, where the
    /// operation can run ([`LayoutOp::cannot_run`] is `None`): put the memory where the
    /// operation needs it (memory-offline moves it to the kmem node). Returns what it did,
    /// for the result's `placement`.
    fn prepare(&self, _target: &LayoutTarget) -> Option<String> {
        None
    }

    /// Why this operation cannot run on `target`: it needs a file and there is none, a
    /// declared partner is missing, or [`LayoutOp::unavailable`]. Checked before every
    /// [`LayoutOp::apply`].
    fn cannot_run(&self, target: &LayoutTarget) -> Option<String> {
        if let Some(why) = self.requires().iter().find_map(|r| r.unmet(target.env)) {
            return Some(why);
        }
        if self.needs_file() && target.file.is_none() {
            return Some("anonymous memory has no file whose layout could change".into());
        }
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

/// `move_pages(2)` every page of `m` to NUMA node `node`: each page's node, or a negative
/// errno where it did not move. For set-up code outside the storms (the lab guest's kmem
/// node).
pub fn move_to_node(m: &Mapping, node: i32) -> Result<Vec<i32>, Errno> {
    sys::move_pages(m, 0, m.len(), Some(node))
}

pub(crate) fn err(op: &'static str, e: impl Into<Errno>) -> LayoutError {
    LayoutError {
        op,
        errno: e.into(),
        partial: None,
        cause: None,
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

    /// A mapping of `len` bytes of anonymous memory.
    fn anon(len: usize, shared: bool) -> Mapping {
        Mapping::anonymous(
            len,
            crate::sys::MapMode {
                shared,
                writable: true,
                hugetlb: false,
                populate: true,
            },
        )
        .unwrap()
    }

    static HOST: OpEnv = OpEnv {
        lab: None,
        journal: None,
    };

    fn target<'a>(
        m: &'a Mapping,
        p: &'a Partners,
        map: MapKind,
        hugetlb: bool,
    ) -> LayoutTarget<'a> {
        LayoutTarget {
            env: &HOST,
            file: None,
            mapping: m,
            map,
            hugetlb,
            size: m.len() as u64,
            align: 4096,
            partners: p,
            cpu_access: true,
        }
    }

    #[test]
    fn memory_operations_declare_where_they_apply_and_file_operations_need_a_file() {
        let p = Partners::default();
        let (private, shared) = (anon(1 << 16, false), anon(1 << 16, true));
        let on_private = target(&private, &p, MapKind::Private, false);
        let on_shared = target(&shared, &p, MapKind::Shared, false);
        let why = |k: LayoutKind, t: &LayoutTarget| k.op().cannot_run(t);
        for k in LayoutKind::ALL {
            let mm = !k.op().needs_file();
            let r = why(*k, &on_private);
            if !mm {
                assert!(
                    r.as_deref().is_some_and(|r| r.contains("no file")),
                    "{k}: {r:?}"
                );
            }
        }
        assert_eq!(why(LayoutKind::MadviseFree, &on_private), None);
        assert!(why(LayoutKind::MadviseFree, &on_shared)
            .is_some_and(|r| r.contains("private anonymous")));
        assert_eq!(why(LayoutKind::MadviseRemove, &on_shared), None);
        assert!(why(LayoutKind::MadviseRemove, &on_private)
            .is_some_and(|r| r.contains("shared mappings only")));
        for k in [
            LayoutKind::MadviseDontneed,
            LayoutKind::MadviseCold,
            LayoutKind::ForkCow,
            LayoutKind::MremapMove,
            LayoutKind::MremapGrow,
        ] {
            assert_eq!(why(k, &on_private), None, "{k}");
            assert_eq!(why(k, &on_shared), None, "{k}");
        }
        let huge = target(&private, &p, MapKind::Private, true);
        assert!(why(LayoutKind::MadvisePageout, &huge).is_some_and(|r| r.contains("hugetlb")));
        // Only an operation that never cuts a file short lets the CPU write the mapping.
        let cut = LayoutTarget {
            cpu_access: false,
            ..target(&private, &p, MapKind::Private, false)
        };
        assert!(why(LayoutKind::ForkCow, &cut).is_some_and(|r| r.contains("SIGBUS")));
        let cutting: Vec<_> = LayoutKind::ALL
            .iter()
            .filter(|k| k.op().cuts_file())
            .collect();
        assert_eq!(cutting, [&LayoutKind::Truncate, &LayoutKind::CollapseRange]);
        // KSM and migration say why where the machine lacks them: ksmd stopped, one node.
        if std::fs::read_to_string("/sys/kernel/mm/ksm/run").is_ok_and(|r| r.trim() != "1") {
            assert!(why(LayoutKind::Ksm, &on_private)
                .is_some_and(|r| r.contains("ksmd is not running")));
        }
        assert!(why(LayoutKind::Ksm, &on_shared).is_some());
        if std::fs::read_to_string("/sys/devices/system/node/online").is_ok_and(|n| n.trim() == "0")
        {
            assert!(
                why(LayoutKind::Migrate, &on_private).is_some_and(|r| r.contains("one NUMA node"))
            );
        }
    }

    #[test]
    fn memory_operations_leave_the_mapping_at_its_address_and_say_what_they_did() {
        let p = Partners::default();
        let m = anon(1 << 16, false);
        m.write_at(0, &[0x5a; 1 << 16]);
        let addr = m.addr();
        let t = target(&m, &p, MapKind::Private, false);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for k in [
            LayoutKind::MadviseDontneed,
            LayoutKind::MadviseFree,
            LayoutKind::MadvisePageout,
            LayoutKind::MadviseCold,
            LayoutKind::ForkCow,
            LayoutKind::MremapMove,
            LayoutKind::MremapGrow,
        ] {
            let a = k
                .op()
                .apply(&t, &mut rng)
                .unwrap_or_else(|e| panic!("{k}: {e}"));
            assert_eq!(m.addr(), addr, "{k}");
            let Effect::Remapped {
                offset,
                len,
                contents,
            } = a.effect
            else {
                panic!("{k}: {:?}", a.effect)
            };
            assert!(offset + len <= 1 << 16 && len > 0, "{k}");
            // Dropped or rewritten private data changes what the process reads; moving the
            // mapping or aging its pages does not.
            let changes = matches!(
                k,
                LayoutKind::MadviseDontneed | LayoutKind::MadviseFree | LayoutKind::ForkCow
            );
            assert_eq!(contents, changes, "{k}");
        }
    }

    #[test]
    fn names_round_trip() {
        for k in LayoutKind::ALL {
            assert_eq!(LayoutKind::parse(k.name()), Ok(*k));
        }
    }
}
