//! The leaked-pins oracle: FOLL_PIN pages still pinned after every pin of the storm was
//! released and its files torn down, judged only when nothing else on the machine pinned
//! around the storm (the counters are system-wide).

use std::time::{Duration, Instant};

use pinstorm_analysis::schema::LeakedPins;
use pinstorm_workloads::pin::FollPins;

/// How long released pins may take to show up as released in /proc/vmstat.
const PIN_SETTLE: Duration = Duration::from_secs(5);
/// The window around a cell in which nothing of the storm pins, to see whether anything else
/// on the machine does; and how many windows to try before the cell for a quiet one.
const IDLE: Duration = Duration::from_millis(50);
const IDLE_TRIES: usize = 5;

/// The FOLL_PIN counters at the start and the end of `IDLE`; `None` without the counters.
fn idle_window() -> Option<IdleWindow> {
    let start = pinstorm_workloads::foll_pin_counters()?;
    let t = Instant::now();
    std::thread::sleep(IDLE);
    let end = pinstorm_workloads::foll_pin_counters()?;
    Some(IdleWindow {
        start,
        end,
        ms: t.elapsed().as_millis() as u64,
    })
}

/// The baseline, read before the storm's threads start: an idle window with nothing of this
/// storm pinned, retried a few times if something else on the machine pinned meanwhile.
/// `None` when the pin path takes no FOLL_PIN pins or the kernel has no counters.
pub fn baseline(foll_pins: FollPins) -> Option<IdleWindow> {
    match foll_pins {
        FollPins::Counted => {
            let mut w = idle_window();
            for _ in 1..IDLE_TRIES {
                if !w.is_some_and(|w| w.moved()) {
                    break;
                }
                w = idle_window();
            }
            w
        }
        FollPins::NotTaken(_) => None,
    }
}

/// Outstanding pages once they settle back to `base`, waiting at most `PIN_SETTLE` (the
/// kernel may release pins asynchronously), and how long that took.
fn settle(base: i64) -> (i64, u64) {
    let t = Instant::now();
    let mut now = base;
    while t.elapsed() < PIN_SETTLE {
        now = pinstorm_workloads::pinned_pages_outstanding().unwrap_or(base);
        if now <= base {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (now, t.elapsed().as_millis() as u64)
}

/// Once every pinner is gone: wait for the released pins to settle, `teardown` the pinned
/// files (unmap and close), look again, and watch an idle window to see whether anything
/// else on the machine is pinning. `teardown` runs exactly once on every path.
pub fn after(
    foll_pins: FollPins,
    before: Option<IdleWindow>,
    teardown: impl FnOnce(),
) -> LeakedPins {
    match (foll_pins, before) {
        (FollPins::NotTaken(why), _) => {
            teardown();
            LeakedPins {
                notrun: Some(why.into()),
                ..LeakedPins::default()
            }
        }
        (FollPins::Counted, Some(before)) => {
            let base = before.outstanding();
            let (released, settle_ms) = settle(base);
            teardown();
            let torn_down = if released > base {
                settle(base).0
            } else {
                released
            };
            match idle_window() {
                Some(after) => judge_leak(&PinCounts {
                    before,
                    released,
                    settle_ms,
                    torn_down,
                    after,
                    folded: pinstorm_workloads::is_root(),
                }),
                None => LeakedPins {
                    notrun: Some("/proc/vmstat could not be read after the storm".into()),
                    ..LeakedPins::default()
                },
            }
        }
        (FollPins::Counted, None) => {
            teardown();
            LeakedPins {
                notrun: Some(
                    "no nr_foll_pin_* counters in /proc/vmstat (kernel before 5.6)".into(),
                ),
                ..LeakedPins::default()
            }
        }
    }
}

/// `nr_foll_pin_acquired` and `nr_foll_pin_released` read at the start and the end of a
/// window in which this storm pinned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleWindow {
    pub start: (u64, u64),
    pub end: (u64, u64),
    pub ms: u64,
}

impl IdleWindow {
    /// Both counters only grow, so any pin taken or released anywhere meanwhile moves them.
    pub fn moved(&self) -> bool {
        self.start != self.end
    }

    /// Pages pinned system-wide at the end of the window.
    pub fn outstanding(&self) -> i64 {
        self.end.0 as i64 - self.end.1 as i64
    }
}

/// What the leaked-pins oracle read around one storm cell (pages outstanding are
/// `acquired - released`, system-wide).
#[derive(Clone, Copy, Debug)]
pub struct PinCounts {
    /// Just before the storm's threads started.
    pub before: IdleWindow,
    /// Outstanding after every pin handle was released (waiting up to the bound).
    pub released: i64,
    pub settle_ms: u64,
    /// Outstanding after the pinned files were unmapped and closed.
    pub torn_down: i64,
    /// Just after the teardown.
    pub after: IdleWindow,
    /// Whether the per-CPU deltas were folded before each reading (root); without that, the
    /// kernel folding them lazily moves the counters too.
    pub folded: bool,
}

/// Leaked pins, or why they cannot be judged: the counters are system-wide, so pins taken or
/// released by anything else on the machine around the storm cannot be told from a leak.
pub fn judge_leak(c: &PinCounts) -> LeakedPins {
    let base = c.before.outstanding();
    let held = (c.released - base).max(0) as u64;
    let left = (c.torn_down - base).max(0) as u64;
    let mut l = LeakedPins {
        settle_ms: c.settle_ms,
        ..LeakedPins::default()
    };
    let moved = [
        ("before the storm", &c.before),
        ("after the teardown", &c.after),
    ]
    .into_iter()
    .find(|(_, w)| w.moved());
    match moved {
        Some((when, w)) => {
            l.notrun = Some(format!(
                "not judged: FOLL_PIN pins were taken or released elsewhere on this machine in the {} ms idle window {when} (acquired +{}, released +{}) while this storm pinned nothing, so other pinning cannot be told from a leak ({left} page(s) above the baseline after the teardown){}",
                w.ms,
                w.end.0.wrapping_sub(w.start.0),
                w.end.1.wrapping_sub(w.start.1),
                if c.folded {
                    ""
                } else {
                    "; without root the kernel folds its per-CPU counts lazily, which moves them too: run as root"
                }
            ));
        }
        None => {
            l.count = left;
            l.held_until_teardown = held - left.min(held);
        }
    }
    l
}
