//! `memory-offline`: memory hot-unplug under a pin, in a lab guest with a node of hot-added
//! memory (a device-dax namespace bound to the `kmem` driver, `pinstorm lab --kmem-node`).
//! Each call:
//!
//! 1. `move_pages(2)` a random range of the pinned mapping to the kmem node (a page pinned at
//!    that moment does not move: its status is an errno); the whole region was moved there
//!    before the storm ([`LayoutOp::prepare`]), so pins hold pages on the node;
//! 2. reads the range's frames (`/proc/self/pagemap`, root) and takes the node's memory
//!    blocks holding any of them offline, one by one (`state` = `offline`, journaled first,
//!    bounded: see [`crate::memblock`]);
//! 3. puts every block it took offline back online in its zone.
//!
//! Offlining migrates every page off the block. A long-term pin in ZONE_NORMAL cannot
//! migrate, so the kernel retries until the writer is killed (EINTR here: still retrying
//! after [`BOUND`]) or gives up with EBUSY; in ZONE_MOVABLE such a page cannot exist (a
//! FOLL_LONGTERM pin migrates it out first). A block that went offline while a pinned page
//! was on it took the page away from the pin: the moved oracle sees the mapping's frame
//! change under the pin, and the device writes memory that is gone.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use rand::RngCore;

use super::sys::move_pages;
use super::{
    err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget, Requirement,
};
use crate::memblock::{self, Online, StateWrite};
use crate::scratch::JournalEntry;
use crate::sys::Errno;

pub struct MemoryOffline;

/// How long one block's offlining may retry before its writer is killed.
pub const BOUND: Duration = Duration::from_millis(500);

/// The frame of each 4 KiB page of `len` bytes at `addr` (None: not present).
fn frames(addr: usize, len: usize) -> Result<Vec<Option<u64>>, Errno> {
    let f = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| Errno::from_io(&e).unwrap_or(Errno(libc::EIO)))?;
    let mut raw = vec![0u8; len / 4096 * 8];
    f.read_exact_at(&mut raw, (addr / 4096 * 8) as u64)
        .map_err(|e| Errno::from_io(&e).unwrap_or(Errno(libc::EIO)))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            let e = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
        })
        .collect())
}

/// The memory blocks (of `of`) holding these frames, with how many frames each holds.
pub(crate) fn blocks_of(
    frames: &[Option<u64>],
    block_size: u64,
    of: &[u32],
) -> BTreeMap<u32, usize> {
    let mut out = BTreeMap::new();
    for pfn in frames.iter().flatten() {
        let b = (pfn * 4096 / block_size.max(4096)) as u32;
        if of.contains(&b) {
            *out.entry(b).or_default() += 1;
        }
    }
    out
}

fn statuses(status: &[i32], node: i32) -> String {
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for s in status {
        let k = if *s == node {
            format!("node {node}")
        } else if *s < 0 {
            Errno(-s).name()
        } else {
            format!("node {s}")
        };
        *n.entry(k).or_default() += 1;
    }
    n.iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Put a block this call took offline back online the way it was. A block that holds
/// hardware-poisoned pages (another operation's, here) goes offline but never online again
/// until reboot on kernels with 5033091de814 "mm/hwpoison: introduce per-memory_block
/// hwpoison counter" (6.2): `memory_block_online()` returns -EHWPOISON. Measured: Debian's
/// 6.1 onlines such a block (docs/mm.md).
fn put_back(block: u32, online: Online, effect: Effect) -> Result<(), LayoutError> {
    let back = memblock::write_state(block, online.state(), Duration::from_secs(10));
    if matches!(back, Ok(StateWrite::Done { .. })) {
        return Ok(());
    }
    let errno = match back {
        Ok(StateWrite::Failed { errno, .. }) => errno,
        _ => Errno(libc::EIO),
    };
    let why = if errno.0 == libc::EHWPOISON {
        "left offline: the block holds hardware-poisoned pages, the kernel refuses to online it"
    } else {
        "left offline: putting it back online failed"
    };
    Err(LayoutError {
        op: "putting a memory block back online",
        errno,
        partial: Some(effect),
        cause: Some(why.to_string()),
    })
}

impl LayoutOp for MemoryOffline {
    fn kind(&self) -> LayoutKind {
        LayoutKind::MemoryOffline
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn requires(&self) -> &'static [Requirement] {
        &[
            Requirement::LabGuest,
            Requirement::Root,
            Requirement::KmemNode,
        ]
    }

    fn unavailable(&self, t: &LayoutTarget) -> Option<String> {
        if t.hugetlb {
            return Some("hugetlb pages come from the pool, not from the kmem node".into());
        }
        t.env
            .journal
            .is_none()
            .then(|| "no run journal to record the blocks it takes offline".into())
    }

    /// Move the whole region to the kmem node before anything pins it: a long-term pin then
    /// holds pages on the node's blocks (in ZONE_NORMAL it does not migrate them). The
    /// kernel puts its own node-local allocations at the node's lowest free pages (measured
    /// on 6.1, 6.12 and 7.2: a slab page at the first page of the first block), and a block
    /// holding one never goes offline, pin or not; the node hands out its lowest free pages
    /// first. So a ballast of one block's size goes to the node first and is freed after the
    /// region followed it: the region lands past the kernel's pages, and what the kernel
    /// allocates later goes where the ballast was. Says which blocks hold the region.
    fn prepare(&self, t: &LayoutTarget) -> Option<String> {
        use crate::sys::{MapMode, Mapping};
        let kmem = t.env.lab.as_ref()?.kmem.as_ref()?;
        let node = kmem.node;
        let ballast = memblock::block_size().ok().and_then(|bs| {
            let m = Mapping::anonymous(
                bs as usize,
                MapMode {
                    shared: false,
                    writable: true,
                    hugetlb: false,
                    populate: true,
                },
            )
            .ok()?;
            let st = move_pages(&m, 0, m.len(), Some(node)).ok()?;
            let on = st.iter().filter(|s| **s == node).count();
            Some((m, on))
        });
        let moved = match move_pages(t.mapping, 0, t.mapping.len(), Some(node)) {
            Ok(status) => statuses(&status, node),
            Err(e) => e.name(),
        };
        let ballast = match ballast {
            Some((m, on)) => {
                drop(m);
                format!("after a ballast of {on} pages")
            }
            None => "no ballast".into(),
        };
        let all = memblock::node_blocks(node).unwrap_or_default();
        let held = memblock::block_size()
            .ok()
            .and_then(|bs| {
                Some(blocks_of(
                    &frames(t.mapping.addr(), t.mapping.len()).ok()?,
                    bs,
                    &all,
                ))
            })
            .unwrap_or_default();
        let held: Vec<String> = held
            .iter()
            .map(|(b, n)| {
                let usable = if kmem.blocks.contains(b) {
                    ""
                } else {
                    ", left out"
                };
                format!("memory{b} x{n}{usable}")
            })
            .collect();
        Some(format!(
            "move_pages to node {node} ({ballast}): {moved}; on {}",
            if held.is_empty() {
                "no block of the node".to_string()
            } else {
                held.join(", ")
            }
        ))
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let kmem = t
            .env
            .lab
            .as_ref()
            .and_then(|l| l.kmem.as_ref())
            .expect("checked by cannot_run()");
        let journal = t.env.journal.as_ref().expect("checked by cannot_run()");
        let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
        let status = move_pages(t.mapping, off as usize, len as usize, Some(kmem.node))
            .map_err(|e| err("move_pages(to the kmem node)", e))?;
        let placed = statuses(&status, kmem.node);
        let block_size = memblock::block_size()
            .map_err(|_| err("reading block_size_bytes", Errno(libc::EIO)))?;
        let fr = frames(t.mapping.addr() + off as usize, len as usize)
            .map_err(|e| err("reading /proc/self/pagemap", e))?;
        let held = blocks_of(&fr, block_size, &kmem.blocks);
        let effect = Effect::Remapped {
            offset: off,
            len,
            contents: false,
        };
        if held.is_empty() {
            return Err(LayoutError {
                op: "no page of the range on a usable block of the kmem node",
                errno: Errno(libc::ENOENT),
                // move_pages may have moved pages of the range: attributed to this call.
                partial: Some(effect),
                cause: None,
            });
        }
        let mut done = Vec::new();
        let mut failed: Option<(Errno, Option<String>)> = None;
        for (b, pages) in &held {
            let online = memblock::zone(*b)
                .map(|z| Online::of_zone(&z))
                .unwrap_or(Online::Default);
            journal
                .record(&JournalEntry::MemoryBlock { block: *b, online })
                .map_err(|_| err("journaling a memory block", Errno(libc::EIO)))?;
            let mut log = memblock::KmsgTail::open();
            let w = memblock::write_state(*b, "offline", BOUND)
                .map_err(|_| err("writing a memory block's state", Errno(libc::EIO)))?;
            let cause = memblock::offline_cause(&log.read());
            // A writer killed at the bound may have been killed just after the kernel
            // finished offlining (no signal check is left after the last migration pass),
            // and a failed write says nothing of the state either: the block's state file
            // decides whether it has to go back online.
            let offline_now = !matches!(w, StateWrite::Done { .. })
                && memblock::state(*b).is_ok_and(|s| s == "offline");
            match w {
                StateWrite::Done { ms } => {
                    put_back(*b, online, effect)?;
                    done.push(format!(
                        "memory{b} ({pages} pages) offline in {ms:.1} ms, back {}",
                        online.state()
                    ));
                }
                StateWrite::Failed { errno, ms } => {
                    if offline_now {
                        put_back(*b, online, effect)?;
                    }
                    done.push(format!(
                        "memory{b} ({pages} pages): {} after {ms:.1} ms",
                        errno.name()
                    ));
                    failed.get_or_insert((errno, cause));
                }
                StateWrite::Interrupted { ms } if offline_now => {
                    // It went offline after all: the writer's kill came too late.
                    put_back(*b, online, effect)?;
                    done.push(format!(
                        "memory{b} ({pages} pages) offline as its writer was killed after {ms:.0} ms, back {}",
                        online.state()
                    ));
                }
                StateWrite::Interrupted { ms } => {
                    done.push(format!(
                        "memory{b} ({pages} pages): still retrying after {ms:.0} ms, writer killed"
                    ));
                    failed.get_or_insert((
                        Errno(libc::EINTR),
                        Some(cause.map_or("still migrating: writer killed".into(), |c| {
                            format!("still migrating: writer killed; {c}")
                        })),
                    ));
                }
            }
        }
        let desc = format!(
            "memory-offline {off}+{len}: move_pages to node {}: {placed}; {}",
            kmem.node,
            done.join("; ")
        );
        match failed {
            // Offlining migrates what it can before it fails: pages may have moved.
            Some((errno, cause)) => Err(LayoutError {
                op: "offlining a memory block holding the range",
                errno,
                partial: Some(effect),
                cause,
            }),
            None => Ok(Applied { effect, desc }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_map_to_the_node_blocks_that_hold_them() {
        let bs = 128 << 20;
        let per_block = bs / 4096;
        let frames = [
            Some(40 * per_block),
            Some(40 * per_block + 5),
            Some(41 * per_block),
            Some(3),
            None,
        ];
        let held = blocks_of(&frames, bs, &[40, 41]);
        assert_eq!(held.into_iter().collect::<Vec<_>>(), vec![(40, 2), (41, 1)]);
        assert!(blocks_of(&frames, bs, &[7]).is_empty());
    }

    #[test]
    fn move_pages_statuses_are_counted_by_node_and_errno() {
        let s = statuses(&[1, 1, -libc::EBUSY, 0], 1);
        assert_eq!(s, "EBUSY x1, node 0 x1, node 1 x2");
    }
}
