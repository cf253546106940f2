//! The diverged and moved oracles: do the pin and the process's mapping still point at the
//! same pages?
//!
//! - *diverged*: the device wrote through the pin (and reads its own write back) but the
//!   process does not see it through its mapping; or the process wrote through its mapping
//!   and the device reads something else through the pin. Judged only when no operation
//!   overlapped the registration nor the window from the write to the check: whatever ran
//!   between the pin and the write is the cause, named per page ([`super::FileState::cause`]).
//! - *moved*: a page present in the mapping both right after the pin and just before the
//!   unpin sits at another physical frame (`/proc/self/pagemap`, which shows frames only to
//!   CAP_SYS_ADMIN). A long-term pin keeps its page where it is; a mapping that points at
//!   another frame no longer maps the pinned page.

use super::{quiet, Snapshot};

/// Which way the data went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device wrote through the pin; the CPU reads the mapping.
    DeviceToCpu,
    /// The CPU wrote through the mapping; the device reads through the pin.
    CpuToDevice,
}

impl Direction {
    pub fn describe(self, found: &str) -> String {
        match self {
            Direction::DeviceToCpu => format!(
                "the device's write through the pin is not what the process sees through its mapping (it sees {found}); the device reads its own write back: the pin and the mapping point at different pages"
            ),
            Direction::CpuToDevice => format!(
                "the process's write through its mapping is not what the device reads through the pin (it reads {found}): the pin and the mapping point at different pages"
            ),
        }
    }
}

/// Everything one check of the two views depends on.
pub struct ViewFacts<'a> {
    /// Before and after the registration of the pin.
    pub pin: (Snapshot, Snapshot),
    /// Before the write, and after the other side read it.
    pub window: (Snapshot, Snapshot),
    /// What was written.
    pub wrote: &'a [u8],
    /// Whether the writer's own side holds the write (the device's read-back through the
    /// pin for a device write; always for the CPU's write through its mapping). A device
    /// write that is not even in the pinned page is the lost-write oracle's.
    pub landed: bool,
    /// What the other side read; `None` if it could not.
    pub seen: Option<&'a [u8]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Same,
    /// An operation overlapped the pin or the check, the write did not land on its own
    /// side, or the other side could not read: not judged.
    Ambiguous,
    Diverged,
}

pub fn judge(f: &ViewFacts) -> View {
    match f.seen {
        Some(seen) if seen == f.wrote => View::Same,
        Some(_) if f.landed && quiet(f.pin.0, f.pin.1) && quiet(f.window.0, f.window.1) => {
            View::Diverged
        }
        _ => View::Ambiguous,
    }
}

/// The pages whose frame changed between two readings of the pinned range (`None`: not
/// present then), as `(page, before, after)`.
pub fn moved(before: &[Option<u64>], after: &[Option<u64>]) -> Vec<(usize, u64, u64)> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter_map(|(i, (b, a))| match (b, a) {
            (Some(b), Some(a)) if b != a => Some((i, *b, *a)),
            _ => None,
        })
        .collect()
}
