//! Kernel log messages: which ones report a kernel problem, and reading them from
//! `/dev/kmsg` during a storm.
//!
//! [`classify`] is the one classifier of kernel messages: the storm's kernel-warnings oracle
//! uses it on `/dev/kmsg` records and the lab uses it on guest console lines
//! (`pinstorm_lab::console`). It matches the headers the kernel itself prints for a panic,
//! an oops, a BUG, a WARN, a lockup, a hung task, an RCU stall and a lockdep report, from the
//! start of the message as syzkaller's `pkg/report/linux.go` does. Words anywhere else in a
//! line ("DAX enabled. Warning: EXPERIMENTAL", "report a bug", a program echoing "BUG:")
//! are not reports.
//!
//! [`Kmsg`] reads `/dev/kmsg` from the position at open, so older messages are ignored, and
//! keeps only records the kernel logged itself: anything a process writes to `/dev/kmsg`
//! gets a non-zero syslog facility (the kernel forces LOG_USER when the writer asks for
//! facility 0), so a user-space "BUG:" line is never a kernel report.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// What a kernel message reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Kernel panic - not syncing: ...`
    Panic,
    /// A fault the kernel died on: `Oops: ...`, `general protection fault`, `BUG: unable
    /// to handle page fault`, `BUG: kernel NULL pointer dereference`, arm64's `Unable to
    /// handle kernel ...` and `Internal error: Oops`.
    Oops,
    /// `kernel BUG at file:line!`, any other `BUG: ...` (KASAN, KFENCE, KMSAN, KCSAN, bad
    /// page state, sleeping in atomic context, ...), SLUB's `BUG cache (...)`, `UBSAN: ...`.
    Bug,
    /// The soft- and hard-lockup watchdogs and the workqueue watchdog: a CPU or a worker
    /// pool made no progress for seconds.
    Lockup,
    /// `INFO: task comm:pid blocked for more than N seconds.`
    HungTask,
    /// RCU's stall warnings (normal, self-detected, expedited, tasks).
    RcuStall,
    /// A lockdep report (`WARNING: possible circular locking dependency detected`, ...) or
    /// lockdep's `WARNING: suspicious RCU usage`.
    Lockdep,
    /// `WARNING: CPU: n PID: p at file:line func` (and the older and newer forms of the
    /// WARN() header).
    Warning,
}

impl Kind {
    /// The name used in results (`ConsoleEvent::kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Panic => "panic",
            Kind::Oops => "oops",
            Kind::Bug => "bug",
            Kind::Lockup => "lockup",
            Kind::HungTask => "hung-task",
            Kind::RcuStall => "rcu-stall",
            Kind::Lockdep => "lockdep",
            Kind::Warning => "warning",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lockdep's report headers (kernel/locking/lockdep.c) and lockdep_rcu_suspicious(), after
/// "WARNING: ". The `X-safe -> X-unsafe lock order` and `comm/pid still has locks held`
/// headers carry variable parts and are matched in [`lockdep_warning`].
const LOCKDEP_WARNINGS: &[&str] = &[
    "possible circular locking dependency detected",
    "possible recursive locking detected",
    "possible irq lock inversion dependency detected",
    "inconsistent lock state",
    "suspicious RCU usage",
    "bad unlock balance detected!",
    "bad contention detected!",
    "held lock freed!",
    "lock held when returning to user space!",
    "Nested lock was not taken",
];

/// What `msg` reports, if it is the header line of a kernel report. `msg` is one kernel
/// message: the text of a `/dev/kmsg` record after its `prio,seq,usec,flags;` header, or a
/// console line without its `[  1.234]` timestamp and `[ T123]` caller id
/// ([`console_message`]). Only the header line is matched: the stack, registers and
/// "cut here" lines around it are not events of their own.
pub fn classify(msg: &str) -> Option<Kind> {
    if msg.starts_with("Kernel panic - not syncing") {
        return Some(Kind::Panic);
    }
    if let Some(k) = watchdog(msg) {
        return Some(k);
    }
    if let Some(rest) = msg.strip_prefix("BUG:") {
        let rest = rest.trim_start();
        return Some(
            if rest.starts_with("unable to handle")
                || rest.starts_with("Unable to handle")
                || rest.starts_with("kernel NULL pointer dereference")
            {
                Kind::Oops
            } else if rest.starts_with("soft lockup") || rest.starts_with("workqueue lockup") {
                Kind::Lockup
            } else {
                Kind::Bug
            },
        );
    }
    // die() headers: x86 prints "Oops: " first since 6.10; older kernels print the trap
    // name alone ("general protection fault: 0000 [#1] SMP", "invalid opcode: 0000 [#1]").
    // User-space faults are logged as "traps: prog[pid] general protection fault ip:...",
    // which does not start with the trap name.
    if msg.starts_with("Oops:")
        || msg.starts_with("general protection fault")
        || msg.starts_with("Internal error: Oops")
        || msg.starts_with("Unable to handle kernel ")
        || is_die_header(msg, "invalid opcode: ")
        || is_die_header(msg, "divide error: ")
        || is_die_header(msg, "stack segment: ")
        || is_die_header(msg, "double fault: ")
    {
        return Some(Kind::Oops);
    }
    if msg.starts_with("kernel BUG at ") || msg.starts_with("UBSAN: ") || slub_bug(msg) {
        return Some(Kind::Bug);
    }
    if let Some(rest) = msg.strip_prefix("WARNING: ") {
        if lockdep_warning(rest) {
            return Some(Kind::Lockdep);
        }
        if warn_header(rest) {
            return Some(Kind::Warning);
        }
        return None;
    }
    if msg.starts_with("INFO: task ") && msg.contains(" blocked for more than ") {
        return Some(Kind::HungTask);
    }
    if rcu_stall(msg.strip_prefix("rcu: ").unwrap_or(msg)) {
        return Some(Kind::RcuStall);
    }
    // Lockdep's "[ BUG: Invalid wait context ]", and the bracketed headers older kernels'
    // lockdep printed ("[ INFO: possible circular locking dependency detected ]").
    if ((msg.starts_with("[ BUG: ") || msg.starts_with("[ INFO: "))
        && msg.trim_end().ends_with(']'))
        || msg.starts_with("INFO: trying to register non-static key")
    {
        return Some(Kind::Lockdep);
    }
    None
}

/// The soft- and hard-lockup detectors with their pr_fmt ("watchdog: ", "NMI watchdog: " in
/// older kernels) and the buddy detector's "CPU3: ". A soft lockup without the prefix is a
/// "BUG: soft lockup" of [`classify`].
fn watchdog(msg: &str) -> Option<Kind> {
    let rest = msg
        .strip_prefix("watchdog: ")
        .or_else(|| msg.strip_prefix("NMI watchdog: "))?;
    let rest = match rest.strip_prefix("CPU").and_then(|r| r.split_once(": ")) {
        Some((n, r)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => r,
        _ => rest,
    };
    (rest.starts_with("BUG: soft lockup") || rest.starts_with("Watchdog detected hard LOCKUP"))
        .then_some(Kind::Lockup)
}

/// `<trap>: <error code> [#n]`, the die() header of a kernel-mode trap (arch/x86 die()).
fn is_die_header(msg: &str, trap: &str) -> bool {
    msg.strip_prefix(trap).is_some_and(|r| {
        r.split_once(' ').is_some_and(|(code, after)| {
            code.bytes().all(|b| b.is_ascii_hexdigit()) && after.starts_with("[#")
        })
    })
}

/// SLUB's slab_bug(): `BUG <cache> (<taint>): <what>`, e.g. `BUG kmalloc-64 (Not
/// tainted): Object already free`.
fn slub_bug(msg: &str) -> bool {
    msg.strip_prefix("BUG ").is_some_and(|r| {
        r.split_once(" (")
            .is_some_and(|(cache, after)| !cache.contains(' ') && after.contains("): "))
    })
}

fn lockdep_warning(rest: &str) -> bool {
    if LOCKDEP_WARNINGS.iter().any(|h| rest.starts_with(h)) {
        return true;
    }
    // "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected"
    if let Some((a, b)) = rest.split_once("-safe -> ") {
        if !a.contains(' ') && b.starts_with(a) && b[a.len()..].starts_with("-unsafe lock order") {
            return true;
        }
    }
    // "WARNING: kworker/0:1/42 still has locks held!"
    rest.split_once(' ')
        .is_some_and(|(task, after)| task.contains('/') && after == "still has locks held!")
}

/// The header __warn() prints (kernel/panic.c), after "WARNING: ": "CPU: 1 PID: 42 at
/// mm/gup.c:123 func+0x1/0x2" (most kernels), "mm/gup.c:123 at func+0x1/0x2, CPU#1: comm/42"
/// (the format of 6.19 kernels), or "at func+0x1/0x2" (no file; also the oldest kernels'
/// "at mm/gup.c:123 func()").
fn warn_header(rest: &str) -> bool {
    if rest.starts_with("CPU: ") || rest.starts_with("at ") {
        return true;
    }
    rest.split_once(' ').is_some_and(|(loc, after)| {
        after.starts_with("at ")
            && loc.rsplit_once(':').is_some_and(|(file, line)| {
                !file.is_empty() && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
            })
    })
}

/// "INFO: rcu_preempt detected stalls on CPUs/tasks:", "INFO: rcu_sched self-detected stall
/// on CPU", "INFO: rcu_preempt detected expedited stalls on CPUs/tasks: {", "INFO:
/// rcu_tasks detected stalls on tasks:" (kernel/rcu/tree_stall.h, tree_exp.h, tasks.h).
fn rcu_stall(msg: &str) -> bool {
    msg.strip_prefix("INFO: rcu_")
        .and_then(|r| r.split_once(' '))
        .is_some_and(|(_, what)| {
            what.starts_with("detected stall")
                || what.starts_with("self-detected stall")
                || what.starts_with("detected expedited stall")
        })
}

/// The kernel message of a console line: without the `[    1.234567]` timestamp and the
/// `[    T123]` / `[  C0]` caller id of CONFIG_PRINTK_CALLER (and a `<4>` level prefix
/// where the console shows one). A line without a timestamp is returned as it is (booted
/// with printk.time=0, or not a kernel line).
pub fn console_message(line: &str) -> &str {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut t = line;
    if let Some(r) = t.strip_prefix('<') {
        if let Some((lvl, r)) = r.split_once('>') {
            if !lvl.is_empty() && lvl.bytes().all(|b| b.is_ascii_digit()) {
                t = r;
            }
        }
    }
    let Some(r) = bracketed(t, |s| {
        s.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
    }) else {
        return line;
    };
    t = r;
    let caller = |s: &str| {
        s.strip_prefix(['T', 'C'])
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    };
    if let Some(r) = bracketed(t.trim_start_matches(' '), caller) {
        t = r;
    }
    t.strip_prefix(' ').unwrap_or(t)
}

/// `s` after a leading `[ ... ]` whose content (without padding) passes `ok`.
fn bracketed(s: &str, ok: impl Fn(&str) -> bool) -> Option<&str> {
    let r = s.strip_prefix('[')?;
    let (inner, rest) = r.split_once(']')?;
    ok(inner.trim_start_matches(' ')).then_some(rest)
}

/// One `/dev/kmsg` record (Documentation/ABI/testing/dev-kmsg).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Syslog facility: 0 for the kernel's own messages, non-zero for anything a process
    /// wrote to `/dev/kmsg`.
    pub facility: u32,
    /// Log level, 0 (emerg) to 7 (debug).
    pub level: u8,
    pub seq: u64,
    /// The message, without the header and without the ` KEY=value` dictionary lines
    /// that follow it (non-printable bytes stay escaped as the kernel wrote them, `\x09`).
    pub text: String,
}

impl Record {
    /// Parse `prio,seq,usec,flags[,more];message\n[ KEY=value\n]...`; `None` when the
    /// header is not of that form.
    pub fn parse(rec: &str) -> Option<Record> {
        let (header, body) = rec.split_once(';')?;
        let mut fields = header.split(',');
        let prio: u32 = fields.next()?.parse().ok()?;
        let seq: u64 = fields.next()?.parse().ok()?;
        let _usec: u64 = fields.next()?.parse().ok()?;
        fields.next()?;
        Some(Record {
            facility: prio >> 3,
            level: (prio & 7) as u8,
            seq,
            text: body.split('\n').next().unwrap_or("").to_string(),
        })
    }

    /// What the record reports, if the kernel logged it and it is a report header.
    pub fn event(&self) -> Option<Kind> {
        if self.facility != 0 {
            return None;
        }
        classify(&self.text)
    }
}

pub struct Kmsg {
    file: Option<File>,
    pub notrun: Option<String>,
}

impl Kmsg {
    /// Open and skip to the end of the log.
    pub fn open() -> Kmsg {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg");
        match f {
            Ok(mut f) => match f.seek(SeekFrom::End(0)) {
                Ok(_) => Kmsg {
                    file: Some(f),
                    notrun: None,
                },
                Err(e) => Kmsg {
                    file: None,
                    notrun: Some(format!("cannot seek /dev/kmsg: {e}")),
                },
            },
            Err(e) => Kmsg {
                file: None,
                notrun: Some(format!(
                    "cannot read /dev/kmsg ({e}); run as root or set kernel.dmesg_restrict=0"
                )),
            },
        }
    }

    /// Every new record since the last call.
    pub fn take(&mut self) -> Vec<Record> {
        match self.file.as_mut() {
            Some(f) => read_raw(f)
                .iter()
                .filter_map(|r| Record::parse(r))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The kernel's reports among the new records: their kind and message.
    pub fn take_events(&mut self) -> Vec<(Kind, String)> {
        self.take()
            .into_iter()
            .filter_map(|r| r.event().map(|k| (k, r.text)))
            .collect()
    }
}

/// Every record readable from `f` without blocking (each `read` returns one record).
fn read_raw(f: &mut File) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            // EPIPE: messages were overwritten before we read them; go on from here.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(msg: &str) -> Option<&'static str> {
        classify(msg).map(Kind::as_str)
    }

    /// Report headers as kernels print them, copied from real logs (LKML reports, syzbot,
    /// the kernel test robot) and from the kernel's format strings.
    #[test]
    fn kernel_report_headers_are_classified_by_kind() {
        let cases: &[(&str, &str)] = &[
            ("Kernel panic - not syncing: Fatal exception", "panic"),
            ("Kernel panic - not syncing: sysrq triggered crash", "panic"),
            ("Kernel panic - not syncing: Hard LOCKUP", "panic"),
            ("Oops: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
            ("Oops: general protection fault, probably for non-canonical address 0xdffffc0000000000: 0000 [#1] SMP KASAN PTI", "oops"),
            ("Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
            ("general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN", "oops"),
            ("general protection fault: 0000 [#1] SMP", "oops"),
            ("invalid opcode: 0000 [#1] SMP PTI", "oops"),
            ("BUG: unable to handle page fault for address: ffffc90000a8f000", "oops"),
            ("BUG: unable to handle kernel paging request at ffffffffa0000000", "oops"),
            ("BUG: kernel NULL pointer dereference, address: 0000000000000008", "oops"),
            ("Unable to handle kernel NULL pointer dereference at virtual address 0000000000000008", "oops"),
            ("Internal error: Oops: 0000000096000005 [#1] PREEMPT SMP", "oops"),
            ("kernel BUG at mm/gup.c:2044!", "bug"),
            ("BUG: Bad page state in process a.out  pfn:1a2b3", "bug"),
            ("BUG: Bad page map in process a.out  pte:8000000 pmd:1234067", "bug"),
            ("BUG: sleeping function called from invalid context at mm/gup.c:1234", "bug"),
            ("BUG: scheduling while atomic: swapper/0/0/0x00000002", "bug"),
            ("BUG: KASAN: slab-use-after-free in iomap_dio_bio_end_io+0x3c/0x120", "bug"),
            ("BUG: KFENCE: use-after-free read in test_use_after_free_read+0xb3/0x143", "bug"),
            ("BUG: KCSAN: data-race in __filemap_add_folio / filemap_get_pages", "bug"),
            ("BUG kmalloc-64 (Not tainted): Object already free", "bug"),
            ("UBSAN: array-index-out-of-bounds in fs/xfs/libxfs/xfs_bmap.c:4567:3", "bug"),
            ("watchdog: BUG: soft lockup - CPU#24 stuck for 23s! [pthread_mutex1_:6650]", "lockup"),
            ("NMI watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]", "lockup"),
            ("BUG: soft lockup - CPU#0 stuck for 61s! [kworker/0:1:25]", "lockup"),
            ("watchdog: Watchdog detected hard LOCKUP on cpu 3", "lockup"),
            ("NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", "lockup"),
            ("watchdog: CPU3: Watchdog detected hard LOCKUP on cpu 3", "lockup"),
            ("BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!", "lockup"),
            ("INFO: task xfs_io:311 blocked for more than 120 seconds.", "hung-task"),
            ("INFO: task (networkd):520 blocked for more than 122 seconds.", "hung-task"),
            ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu-stall"),
            ("rcu: INFO: rcu_sched self-detected stall on CPU", "rcu-stall"),
            ("rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 1-...D } 2651 jiffies s: 2425 root: 0x2/.", "rcu-stall"),
            ("INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu-stall"),
            ("INFO: rcu_tasks detected stalls on tasks:", "rcu-stall"),
            ("WARNING: possible circular locking dependency detected", "lockdep"),
            ("WARNING: possible recursive locking detected", "lockdep"),
            ("WARNING: inconsistent lock state", "lockdep"),
            ("WARNING: suspicious RCU usage", "lockdep"),
            ("WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", "lockdep"),
            ("WARNING: bad unlock balance detected!", "lockdep"),
            ("WARNING: kworker/u8:3/1234 still has locks held!", "lockdep"),
            ("[ BUG: Invalid wait context ]", "lockdep"),
            ("[ INFO: possible circular locking dependency detected ]", "lockdep"),
            ("INFO: trying to register non-static key.", "lockdep"),
            ("WARNING: CPU: 1 PID: 123 at mm/gup.c:1234 __gup_longterm_locked+0x12/0x34", "warning"),
            ("WARNING: CPU: 3 PID: 1 at mm/debug_vm_pgtable.c:493 debug_vm_pgtable+0x2a/0x3c", "warning"),
            ("WARNING: CPU: 0 PID: 311 at fs/dax.c:1 x+0x1/0x2 [xfs]", "warning"),
            ("WARNING: kernel/locking/rwsem.c:1405 at up_write+0x1e2/0x410, CPU#0: swapper/0/1", "warning"),
            ("WARNING: lib/string_helpers.c:1035 at 0xc029e04c, CPU#0: swapper/0/1", "warning"),
            ("WARNING: at kernel/sched.c:5914 thread_return+0x232/0x79d()", "warning"),
        ];
        for (msg, want) in cases {
            assert_eq!(kind(msg), Some(*want), "{msg}");
        }
    }

    /// Lines that name a problem in passing, real lines from mounts and boots (this host's
    /// dmesg, an FS-DAX guest's), and the prefixes around a report: none is a report.
    #[test]
    fn dax_mount_notices_user_faults_and_words_mid_line_are_not_reports() {
        let lines = [
            "XFS (pmem0): DAX enabled. Warning: EXPERIMENTAL, use at your own risk",
            "XFS (pmem0): DAX enabled. Warning: Reflink and DAX are experimental, use at your own risk",
            "EXT4-fs (pmem0): DAX enabled. Warning: EXPERIMENTAL, use at your own risk",
            "EXT4-fs (pmem0): DAX enabled",
            "XFS (loop0): DAX unsupported by block device. Turning off DAX.",
            "EXT4-fs (loop1): DAX unsupported by block device.",
            "EXT4-fs (loop1): mounted filesystem 0375187f-1d20-4dfa-9dea-5c1ef21a7d66 r/w with ordered data mode. Quota mode: none.",
            "XFS (loop0): Mounting V5 Filesystem 11d9d4b5-0f3a-457c-a126-5534886c0bad",
            "nd_pmem namespace0.0: unable to guarantee persistence of writes",
            "traps: a.out[123] general protection fault ip:401136 sp:7ffd4c0 error:0 in a.out[401000+1000]",
            "pinstorm: probe reports BUG: none",
            "systemd[1]: foo.service: WARN: unit ran too long",
            "audit: type=1400 audit(1700000000.123:42): apparmor=\"DENIED\" operation=\"open\"",
            "mm: page still pinned after truncate",
            "Warning: unable to open an initial console.",
            "random: crng init done",
            "[Firmware Bug]: TSC doesn't count with P0 frequency!",
            "Speculative Return Stack Overflow: WARNING: See https://kernel.org/doc/html/latest/admin-guide/hw-vuln/srso.html for mitigation options.",
            "PCI: Using host bridge windows from ACPI; if necessary, use \"pci=nocrs\" and report a bug",
            "SGI XFS with ACLs, security attributes, no debug enabled",
            "WARNING: The mand mount option has been deprecated and and is ignored by this kernel. Remove the mand option from the mount to silence this warning.",
            "------------[ cut here ]------------",
            "---[ end trace 0000000000000000 ]---",
            "---[ end Kernel panic - not syncing: Fatal exception ]---",
            "RIP: 0010:__gup_longterm_locked+0x12/0x34",
            " ? __warn+0x81/0x130",
            "INFO: lockdep is turned off.",
            "rcu: \\x09RCU restricting CPUs from NR_CPUS=256 to nr_cpu_ids=2.",
            "",
        ];
        for l in lines {
            assert_eq!(kind(l), None, "{l}");
        }
    }

    #[test]
    fn console_lines_lose_timestamp_and_caller_id_but_nothing_else() {
        assert_eq!(
            console_message("[  164.798663][T42994] Oops: general protection fault"),
            "Oops: general protection fault"
        );
        assert_eq!(
            console_message("[  138.658008][   C24] watchdog: BUG: soft lockup - CPU#24"),
            "watchdog: BUG: soft lockup - CPU#24"
        );
        assert_eq!(
            console_message("[   12.2] [ T311] WARNING: CPU: 0 PID: 311 at fs/dax.c:1 x\r"),
            "WARNING: CPU: 0 PID: 311 at fs/dax.c:1 x"
        );
        assert_eq!(
            console_message("<4>[    1.133398] WARNING: arch/x86/xen/multicalls.c:190 at"),
            "WARNING: arch/x86/xen/multicalls.c:190 at"
        );
        // Not a timestamp: lockdep's bracketed header and firmware notices keep their
        // brackets, and a line without a timestamp is the message itself.
        assert_eq!(
            console_message("[    3.1] [ BUG: Invalid wait context ]"),
            "[ BUG: Invalid wait context ]"
        );
        assert_eq!(
            console_message("[Firmware Bug]: TSC doesn't count"),
            "[Firmware Bug]: TSC doesn't count"
        );
        assert_eq!(
            console_message("BUG: kernel NULL pointer dereference"),
            "BUG: kernel NULL pointer dereference"
        );
    }

    #[test]
    fn kmsg_records_are_split_into_facility_level_and_first_line() {
        let r = Record::parse("4,1234,5678901,-;WARNING: CPU: 1 PID: 7 at mm/gup.c:1 f+0x1/0x2\n")
            .unwrap();
        assert_eq!((r.facility, r.level, r.seq), (0, 4, 1234));
        assert_eq!(r.text, "WARNING: CPU: 1 PID: 7 at mm/gup.c:1 f+0x1/0x2");
        assert_eq!(r.event(), Some(Kind::Warning));

        // CONFIG_PRINTK_CALLER adds a field to the header; the ` KEY=value` dictionary lines
        // after the message are the device's properties, not part of it.
        let r = Record::parse(
            "3,342,426244695,-,caller=T311;EXT4-fs (loop1): DAX unsupported by block device.\n SUBSYSTEM=block\n DEVICE=+block:loop1\n",
        )
        .unwrap();
        assert_eq!(r.text, "EXT4-fs (loop1): DAX unsupported by block device.");
        assert_eq!(r.event(), None);
        assert_eq!(classify(" SUBSYSTEM=block"), None);
        let r = Record::parse("6,187,361084,-;acpi PNP0A08:00: _OSC: OS supports [ExtendedConfig]\n SUBSYSTEM=acpi\n DEVICE=+acpi:PNP0A08:00 BUG: x\n").unwrap();
        assert_eq!(
            r.text,
            "acpi PNP0A08:00: _OSC: OS supports [ExtendedConfig]"
        );
        assert_eq!(r.event(), None);

        assert_eq!(Record::parse("no header here"), None);
        assert_eq!(Record::parse("x,1,2,-;BUG: y"), None);
        assert_eq!(Record::parse("6,1,2;BUG: too few fields"), None);
    }

    /// A process writing to /dev/kmsg gets LOG_USER even when it asks for facility 0, as
    /// this host's kernel showed: "<4>BUG: ..." written by root comes back as prio 12.
    #[test]
    fn a_user_space_record_is_never_a_kernel_report() {
        let r = Record::parse(
            "12,352,435940183,-;BUG: kernel NULL pointer dereference, address: 0000000000000008\n",
        )
        .unwrap();
        assert_eq!((r.facility, r.level), (1, 4));
        assert_eq!(classify(&r.text), Some(Kind::Oops));
        assert_eq!(r.event(), None);
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// The real /dev/kmsg: every record of this boot parses, in sequence order, and a
    /// report-looking line written from user space is read back but not reported.
    #[test]
    fn dev_kmsg_records_parse_and_user_writes_are_not_reported() {
        if !is_root() {
            eprintln!("skipped dev_kmsg_records_parse_and_user_writes_are_not_reported: needs root (/dev/kmsg)");
            return;
        }
        let mut from_start = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .unwrap();
        let raw = read_raw(&mut from_start);
        assert!(!raw.is_empty(), "the boot log has records");
        let all: Vec<Record> = raw
            .iter()
            .map(|r| Record::parse(r).unwrap_or_else(|| panic!("unparsed record {r:?}")))
            .collect();
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));

        let mut k = Kmsg::open();
        assert_eq!(k.notrun, None);
        let text = format!(
            "BUG: kernel NULL pointer dereference, address: 0000000000000008 (pinstorm kmsg test {})",
            std::process::id()
        );
        std::fs::write("/dev/kmsg", format!("<4>{text}\n")).unwrap();
        let seen = k.take();
        let ours = seen
            .iter()
            .find(|r| r.text == text)
            .expect("the written line is read back");
        assert_ne!(ours.facility, 0, "{ours:?}");
        assert_eq!(classify(&ours.text), Some(Kind::Oops));
        assert_eq!(ours.event(), None);
    }
}
