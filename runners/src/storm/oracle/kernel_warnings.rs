//! The kernel-warnings oracle: kernel report headers (WARNING, BUG, oops, hung task,
//! lockdep) in the kernel log while a storm ran.

use std::sync::Mutex;

use pinstorm_analysis::schema::KernelWarnings;

use crate::kmsg::Kmsg;

fn lock(kmsg: &Mutex<Kmsg>) -> std::sync::MutexGuard<'_, Kmsg> {
    kmsg.lock().unwrap_or_else(|p| p.into_inner())
}

/// Skip what the log holds so far: only what a storm cell provokes is its finding.
pub fn start(kmsg: &Mutex<Kmsg>) {
    let _ = lock(kmsg).take();
}

/// The report headers logged since [`start`], or why the log could not be read.
pub fn judge(kmsg: &Mutex<Kmsg>) -> KernelWarnings {
    let mut k = lock(kmsg);
    let lines: Vec<String> = k.take_events().into_iter().map(|(_, text)| text).collect();
    KernelWarnings {
        count: lines.len() as u64,
        lines,
        notrun: k.notrun.clone(),
    }
}
