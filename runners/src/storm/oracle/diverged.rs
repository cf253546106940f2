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

#[cfg(test)]
mod tests {
    use super::super::{Events, FileState, NO_OPERATION, PAGE};
    use super::*;
    use pinstorm_workloads::layout::{Effect, LayoutKind};

    const WROTE: &[u8] = &[0xc3; 16];
    const OTHER: &[u8] = &[0; 16];

    fn facts<'a>(
        pin: (Snapshot, Snapshot),
        window: (Snapshot, Snapshot),
        landed: bool,
        seen: Option<&'a [u8]>,
    ) -> ViewFacts<'a> {
        ViewFacts {
            pin,
            window,
            wrote: WROTE,
            landed,
            seen,
        }
    }

    /// A file with one operation of `kind` that did `effect`, run between `before` and the
    /// returned snapshot; `.0` is the snapshot taken before it.
    fn run_op(f: &FileState, ev: &Events, kind: LayoutKind, effect: Effect) {
        let mut op = f.op_begin(ev);
        op.kind = Some(kind);
        f.op_end(op, Some(effect), ev);
    }

    #[test]
    fn a_view_that_differs_is_diverged_only_when_no_operation_overlapped_pin_or_check() {
        let f = FileState::new(1, 4);
        let ev = Events::default();
        let s = f.snapshot();
        let quiet = (s, s);
        assert_eq!(judge(&facts(quiet, quiet, true, Some(WROTE))), View::Same);
        assert_eq!(
            judge(&facts(quiet, quiet, true, Some(OTHER))),
            View::Diverged
        );
        // The other side could not read: nothing to judge.
        assert_eq!(judge(&facts(quiet, quiet, true, None)), View::Ambiguous);
        // A device write that is not even in the pinned page is the lost-write oracle's.
        assert_eq!(
            judge(&facts(quiet, quiet, false, Some(OTHER))),
            View::Ambiguous
        );
        // An operation overlapping the registration or the check: not judged.
        let op = f.op_begin(&ev);
        let busy = f.snapshot();
        assert_eq!(
            judge(&facts((s, busy), quiet, true, Some(OTHER))),
            View::Ambiguous
        );
        assert_eq!(
            judge(&facts(quiet, (busy, busy), true, Some(OTHER))),
            View::Ambiguous
        );
        f.op_end(op, None, &ev);
        let after = f.snapshot();
        assert_eq!(
            judge(&facts(quiet, (s, after), true, Some(OTHER))),
            View::Ambiguous
        );
        // One that ran between the pin and the write (ended before the write) is the cause,
        // not an overlap: judged.
        assert_eq!(
            judge(&facts(quiet, (after, after), true, Some(OTHER))),
            View::Diverged
        );
    }

    #[test]
    fn pages_whose_frame_changed_are_moved_and_pages_not_present_are_not_judged() {
        let before = [Some(10), Some(11), None, Some(13)];
        let after = [Some(10), Some(99), Some(12), None];
        assert_eq!(moved(&before, &after), vec![(1, 11, 99)]);
        assert!(moved(&before, &before).is_empty());
    }

    #[test]
    fn a_page_is_attributed_to_the_operations_that_worked_on_it_after_the_pin() {
        let f = FileState::new(1, 4);
        let ev = Events::default();
        // Before the pin: not a cause of anything the pin sees.
        run_op(
            &f,
            &ev,
            LayoutKind::MadviseDontneed,
            Effect::Remapped {
                offset: 0,
                len: 4 * PAGE,
                contents: true,
            },
        );
        let pin_event = ev.next();
        assert_eq!(f.cause(pin_event, 0), NO_OPERATION);
        run_op(
            &f,
            &ev,
            LayoutKind::MadviseCold,
            Effect::Remapped {
                offset: PAGE,
                len: PAGE,
                contents: false,
            },
        );
        run_op(
            &f,
            &ev,
            LayoutKind::ForkCow,
            Effect::Remapped {
                offset: PAGE,
                len: 2 * PAGE,
                contents: true,
            },
        );
        // A layout operation's effect on the file counts too.
        run_op(
            &f,
            &ev,
            LayoutKind::PunchHole,
            Effect::Invalidated {
                offset: 3 * PAGE,
                len: PAGE,
            },
        );
        assert_eq!(f.cause(pin_event, 0), NO_OPERATION);
        assert_eq!(f.cause(pin_event, 1), "fork-cow+madvise-cold");
        assert_eq!(f.cause(pin_event, 2), "fork-cow");
        assert_eq!(f.cause(pin_event, 3), "punch-hole");
        // Only a write that changed what the process reads makes a canary stale.
        assert!(f.page(2).invalidated_at > pin_event);
        assert_eq!(f.page(0).invalidated_at, 1);
    }
}
