//! Reading a guest's console: panics, oopses, BUGs, warnings and hung tasks.

use pinstorm_analysis::schema::ConsoleEvent;

/// Console markers, most severe first. A line matches the first pattern it contains.
const MARKERS: &[(&str, &str)] = &[
    ("Kernel panic - not syncing", "panic"),
    ("Oops:", "oops"),
    ("general protection fault", "oops"),
    ("BUG: unable to handle", "oops"),
    ("BUG: kernel NULL pointer", "oops"),
    ("kernel BUG at", "bug"),
    ("BUG:", "bug"),
    ("blocked for more than", "hung-task"),
    ("rcu_sched self-detected stall", "rcu-stall"),
    ("rcu: INFO: rcu_preempt detected stalls", "rcu-stall"),
    ("rcu_preempt self-detected stall", "rcu-stall"),
    ("possible circular locking dependency", "lockdep"),
    ("WARNING: possible", "lockdep"),
    ("WARNING: suspicious RCU usage", "lockdep"),
    ("WARNING: inconsistent lock state", "lockdep"),
    ("detected stalls on CPUs", "rcu-stall"),
    ("UBSAN:", "bug"),
    ("WARNING: CPU:", "warning"),
    ("WARNING: at", "warning"),
    ("------------[ cut here ]------------", "cut-here"),
];

/// Every marked line of `log`, in order. "cut here" lines are dropped (the WARNING or BUG
/// line that follows carries the meaning).
pub fn events(log: &str) -> Vec<ConsoleEvent> {
    let mut out = Vec::new();
    for (i, line) in log.lines().enumerate() {
        let msg = strip_timestamp(line);
        // A user-space fault the kernel merely logs ("traps: prog[1] general protection
        // fault ip:..."), not a kernel oops.
        if msg.starts_with("traps:") || msg.contains("] general protection fault ip:") {
            continue;
        }
        if let Some((_, kind)) = MARKERS
            .iter()
            .find(|(m, _)| msg.starts_with(m) || (m.len() > 12 && msg.contains(m)))
        {
            if *kind == "cut-here" {
                continue;
            }
            out.push(ConsoleEvent {
                kind: kind.to_string(),
                line: i + 1,
                text: strip_timestamp(line).chars().take(300).collect(),
            });
        }
    }
    out
}

/// The message of a console line: without the `[  1.234]` timestamp and the `[ T123]`
/// caller id of CONFIG_PRINTK_CALLER.
fn strip_timestamp(line: &str) -> &str {
    let mut t = line.trim_start();
    while t.starts_with('[') {
        match t.find(']') {
            Some(end) => t = t[end + 1..].trim_start(),
            None => break,
        }
    }
    t
}

/// Whether the console shows the kernel panicked.
pub fn panicked(ev: &[ConsoleEvent]) -> Option<&ConsoleEvent> {
    ev.iter().find(|e| e.kind == "panic")
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

    #[test]
    fn a_clean_boot_has_no_events() {
        assert!(events("[0.0] Linux version 6.12\n[1.0] virtme-ng-init: ok\n").is_empty());
    }
}
