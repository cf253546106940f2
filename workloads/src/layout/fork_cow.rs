//! `fork-cow`: fork while the pin is held; the child writes a random range of the pinned
//! mapping and exits, the parent writes the same range, then waits for the child.
//!
//! The parent's write after the fork is what decides which side of a copy-on-write keeps the
//! pinned page: the pin must keep seeing what the pinning process sees (the 5.8-5.19 GUP and
//! COW rework, PageAnonExclusive). On a shared mapping both writes land in the same pages.

use rand::RngCore;

use super::sys::fork_child_writes;
use super::{err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget};
use crate::sys::Errno;

pub struct ForkCow;

/// What the child writes: a fill no canary or shaped write ever is.
const CHILD: u8 = 0x11;

impl LayoutOp for ForkCow {
    fn kind(&self) -> LayoutKind {
        LayoutKind::ForkCow
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn unavailable(&self, t: &LayoutTarget) -> Option<String> {
        if !t.mapping.mode().writable {
            return Some("the mapping is read-only: neither side of the fork can write it".into());
        }
        (!t.cpu_access).then(|| {
            "the storm's operations cut the file short, and a CPU write through the mapping could then SIGBUS"
                .into()
        })
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
        // The parent's fill differs from the child's and from the backings' 0x5a.
        let parent = 0x20 | (rng.next_u32() as u8 & 0x0f);
        let child = fork_child_writes(t.mapping, off as usize, len as usize, CHILD)
            .map_err(|e| err("fork", e))?;
        t.mapping
            .write_at(off as usize, &vec![parent; len as usize]);
        let effect = Effect::Remapped {
            offset: off,
            len,
            contents: true,
        };
        child.wait().map_err(|_| LayoutError {
            op: "waitpid",
            errno: Errno(libc::ECHILD),
            partial: Some(effect),
            cause: None,
        })?;
        Ok(Applied {
            effect,
            desc: format!("fork-cow {off}+{len}: child wrote {CHILD:#04x}, parent {parent:#04x}"),
        })
    }
}
