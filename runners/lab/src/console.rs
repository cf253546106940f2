//! Reading a guest's console: panics, oopses, BUGs, lockups, warnings and hung tasks, as
//! [`pinstorm_runners::kmsg::classify`] (the classifier the storm's kernel-warnings oracle uses) sees
//! each line's message.

use pinstorm_analysis::schema::ConsoleEvent;

use pinstorm_runners::kmsg::{classify, console_message, Kind};

/// Every kernel report header in `log`, in order. Only the header line is an event: the
/// "cut here" line before a WARNING and the stack after it are not.
pub fn events(log: &str) -> Vec<ConsoleEvent> {
    log.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let msg = console_message(line);
            classify(msg).map(|kind| ConsoleEvent {
                kind: kind.as_str().to_string(),
                line: i + 1,
                text: msg.chars().take(300).collect(),
            })
        })
        .collect()
}

/// Whether the console shows the kernel panicked.
pub fn panicked(ev: &[ConsoleEvent]) -> Option<&ConsoleEvent> {
    ev.iter().find(|e| e.kind == Kind::Panic.as_str())
}

/// `n` lines of `log` around line `at` (1-based), for a report.
pub fn excerpt(log: &str, at: usize, before: usize, after: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = at.saturating_sub(before + 1);
    let end = (at + after).min(lines.len());
    lines[start.min(end)..end].join("\n")
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_messages_are_classified() {
        let log = "[    0.000000] Linux version 6.1.0\n\
                   [    1.0] ------------[ cut here ]------------\n\
                   [    1.1] WARNING: CPU: 1 PID: 77 at mm/gup.c:123 foo+0x1/0x2\n\
                   [  120.5] INFO: task xfs_io:311 blocked for more than 20 seconds.\n\
                   [  130.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n\
                   [  130.1] Oops: 0000 [#1] PREEMPT SMP NOPTI\n\
                   [  131.0] Kernel panic - not syncing: Fatal exception\n";
        let ev = events(log);
        let kinds: Vec<_> = ev.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["warning", "hung-task", "oops", "oops", "panic"]);
        assert_eq!(ev[0].line, 3);
        assert!(ev[0].text.starts_with("WARNING: CPU: 1"));
        assert_eq!(panicked(&ev).unwrap().line, 7);
        assert!(excerpt(log, 7, 2, 0).contains("Oops"));
        assert_eq!(
            tail(log, 1),
            "[  131.0] Kernel panic - not syncing: Fatal exception"
        );
    }

    #[test]
    fn user_space_faults_and_words_in_the_middle_of_lines_are_not_kernel_events() {
        let log = "[ 12.0] traps: a.out[311] general protection fault ip:401136 sp:7ffd error:0 in a.out\n\
                   [ 12.1] pinstorm: probe reports BUG: none\n\
                   [ 12.2] [ T311] WARNING: CPU: 0 PID: 311 at fs/dax.c:1 x+0x1/0x2\n";
        let ev = events(log);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].kind, "warning");
        assert_eq!(ev[0].line, 3);
    }

    /// A guest console as virtme-ng shows it: FS-DAX mount notices, user-space output and
    /// firmware notices between reports that carry CONFIG_PRINTK_CALLER ids.
    #[test]
    fn reports_among_dax_notices_and_user_output_are_found_with_their_kinds() {
        let log = "[    0.305857] Speculative Return Stack Overflow: WARNING: See https://kernel.org/doc/html/latest/admin-guide/hw-vuln/srso.html for mitigation options.\n\
                   [    2.101000] nd_pmem namespace0.0: unable to guarantee persistence of writes\n\
                   [    2.310000] XFS (pmem0): DAX enabled. Warning: EXPERIMENTAL, use at your own risk\n\
                   [    2.320000] EXT4-fs (pmem1): DAX enabled. Warning: EXPERIMENTAL, use at your own risk\n\
                   [    2.330000] EXT4-fs (pmem1): mounted filesystem 0375187f-1d20-4dfa-9dea-5c1ef21a7d66 r/w with ordered data mode. Quota mode: none.\n\
                   pinstorm lab guest: storm truncate-vs-pin: BUG: none, WARNING: none\n\
                   [   51.000001][  T311] ------------[ cut here ]------------\n\
                   [   51.000002][  T311] WARNING: CPU: 1 PID: 311 at fs/dax.c:1002 dax_layout_busy_page_range+0x1a/0x2b\n\
                   [   51.000003][  T311] Modules linked in:\n\
                   [   60.100000][  T312] BUG: KASAN: slab-use-after-free in iomap_dio_bio_end_io+0x3c/0x120\n\
                   [   88.016563][    C0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [xfs_io:313]\n\
                   [   90.000000][    C1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n\
                   [   91.000000][  T314] WARNING: possible circular locking dependency detected\n\
                   [   92.000000][  T315] traps: a.out[315] general protection fault ip:401136 sp:7ffd4c0 error:0 in a.out[401000+1000]\n";
        let ev = events(log);
        let got: Vec<(&str, usize)> = ev.iter().map(|e| (e.kind.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("warning", 8),
                ("bug", 10),
                ("lockup", 11),
                ("rcu-stall", 12),
                ("lockdep", 13)
            ]
        );
        assert_eq!(
            ev[2].text,
            "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [xfs_io:313]"
        );
        assert!(panicked(&ev).is_none());
    }

    #[test]
    fn a_clean_boot_has_no_events() {
        assert!(events("[0.0] Linux version 6.12\n[1.0] virtme-ng-init: ok\n").is_empty());
    }
}
