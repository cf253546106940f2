//! SIGINT / SIGTERM turn into a flag that every measuring loop checks; the loop returns
//! [`Interrupted`], the error unwinds through the run, and every guard (mounts, loop devices,
//! sysctls, pins) is undone by its `Drop` on the way out. A result marked interrupted is
//! still written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// The run was stopped by a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.0))]
pub struct Interrupted(pub i32);

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Install the handlers (once per process). Until a signal arrives nothing changes.
pub fn install() {
    SIGNAL.get_or_init(|| {
        let flag = Arc::new(AtomicUsize::new(0));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            // The handler stores the signal's number in the flag (async-signal-safe).
            let _ = signal_hook::flag::register_usize(sig, flag.clone(), sig as usize);
        }
        flag
    });
}

/// The signal received so far, if any.
pub fn pending() -> Option<i32> {
    SIGNAL
        .get()
        .map(|f| f.load(Ordering::SeqCst) as i32)
        .filter(|s| *s != 0)
}

/// `Err(Interrupted)` once a signal has arrived.
pub fn check() -> Result<(), Interrupted> {
    match pending() {
        Some(s) => Err(Interrupted(s)),
        None => Ok(()),
    }
}
