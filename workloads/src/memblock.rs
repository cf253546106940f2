//! Memory blocks (`/sys/devices/system/memory/memoryN`): the unit in which Linux onlines and
//! offlines memory. The `memory-offline` operation takes blocks of a lab guest's hot-added
//! node offline under a pin and puts them back; the journal names each block before it goes
//! offline ([`crate::scratch::JournalEntry::MemoryBlock`]) so a killed run's blocks are put
//! back by the next one ([`restore`]).
//!
//! Offlining is a write of `offline` to the block's `state`. The kernel migrates every page
//! off the block first and, when a page will not migrate (a long-term pin in ZONE_NORMAL),
//! retries until the writer gets a signal (a fatal one since 6.5) — the documented way to
//! bound it is to kill the writer ("timeout $TIMEOUT offline_block",
//! Documentation/admin-guide/mm/memory-hotplug.rst). So the write is made by a child
//! process (`dd`), killed after a bound: the state write is the kernel's real path, and the
//! bound is ours.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sys::Errno;

pub const MEMORY: &str = "/sys/devices/system/memory";

/// How a block is (or was) online: what `state` is written to put it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Online {
    /// `online`: the kernel's default zone for the block.
    Default,
    /// `online_kernel`: ZONE_NORMAL.
    Kernel,
    /// `online_movable`: ZONE_MOVABLE.
    Movable,
}

impl Online {
    pub fn state(self) -> &'static str {
        match self {
            Online::Default => "online",
            Online::Kernel => "online_kernel",
            Online::Movable => "online_movable",
        }
    }

    pub fn parse(s: &str) -> Option<Online> {
        [Online::Default, Online::Kernel, Online::Movable]
            .into_iter()
            .find(|o| o.state() == s)
    }

    /// How to put back a block that is online in `zone` (`valid_zones` of an online block
    /// names the one zone it is in).
    pub fn of_zone(zone: &str) -> Online {
        match zone {
            "Movable" => Online::Movable,
            "Normal" | "DMA32" | "DMA" => Online::Kernel,
            _ => Online::Default,
        }
    }
}

fn attr(block: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("{MEMORY}/memory{block}/{name}"))
}

fn read_attr(block: u32, name: &str) -> Result<String> {
    let p = attr(block, name);
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

/// `state` of a block: `online`, `offline` (or `going-offline`).
pub fn state(block: u32) -> Result<String> {
    read_attr(block, "state")
}

/// The zone an online block is in (the first word of `valid_zones`).
pub fn zone(block: u32) -> Result<String> {
    Ok(read_attr(block, "valid_zones")?
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

/// The size of a memory block in bytes (`block_size_bytes`, hex).
pub fn block_size() -> Result<u64> {
    let p = format!("{MEMORY}/block_size_bytes");
    let t = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    u64::from_str_radix(t.trim(), 16).with_context(|| format!("{p} holds {:?}", t.trim()))
}

/// The memory blocks of NUMA node `node` (its `memoryN` links), in order.
pub fn node_blocks(node: i32) -> Result<Vec<u32>> {
    let dir = format!("/sys/devices/system/node/node{node}");
    let mut out: Vec<u32> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("memory")?
                .parse::<u32>()
                .ok()
        })
        .collect();
    out.sort();
    Ok(out)
}

/// What one write of a block's `state` did.
#[derive(Clone, Debug, PartialEq)]
pub enum StateWrite {
    Done {
        ms: f64,
    },
    Failed {
        errno: Errno,
        ms: f64,
    },
    /// Still in the kernel after the bound (offlining retries migration until a signal):
    /// the writer was killed.
    Interrupted {
        ms: f64,
    },
}

/// The errno behind a `dd: error writing '...': <strerror>` line: the errno whose message
/// the line ends with.
pub fn errno_of_message(stderr: &str) -> Option<Errno> {
    let line = stderr.lines().find(|l| !l.trim().is_empty())?.trim();
    (1..134).find_map(|n| {
        let text = std::io::Error::from_raw_os_error(n).to_string();
        let text = text.split(" (os error").next().unwrap_or(&text).to_string();
        line.ends_with(&format!(": {text}")).then_some(Errno(n))
    })
}

/// Write `value` to the block's `state` from a child process, killed after `bound`.
pub fn write_state(block: u32, value: &str, bound: Duration) -> Result<StateWrite> {
    if !matches!(
        value,
        "offline" | "online" | "online_kernel" | "online_movable"
    ) {
        bail!("{value:?} is not a memory block state");
    }
    let path = attr(block, "state");
    let t0 = Instant::now();
    let mut child = Command::new("dd")
        .arg(format!("of={}", path.display()))
        .args(["conv=notrunc", "status=none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting dd to write a memory block's state")?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(value.as_bytes());
    }
    loop {
        if let Some(st) = child.try_wait()? {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if st.success() {
                return Ok(StateWrite::Done { ms });
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return match errno_of_message(&err) {
                Some(errno) => Ok(StateWrite::Failed { errno, ms }),
                None => bail!(
                    "dd writing {value} to {}: {st}: {}",
                    path.display(),
                    err.trim()
                ),
            };
        }
        if t0.elapsed() >= bound {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(StateWrite::Interrupted {
                ms: t0.elapsed().as_secs_f64() * 1e3,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// New kernel log records since it was opened (`/dev/kmsg`, root): where the kernel says
/// why a block stayed online (it dumps the page that stopped it).
pub struct KmsgTail(Option<std::fs::File>);

impl KmsgTail {
    pub fn open() -> KmsgTail {
        use std::io::Seek;
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)).map(|_| f));
        KmsgTail(f.ok())
    }

    /// The messages logged since [`KmsgTail::open`] (or the last call).
    pub fn read(&mut self) -> Vec<String> {
        let Some(f) = self.0.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match std::io::Read::read(f, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    // Only the kernel's own records (facility 0: prio < 8): a user can write
                    // to /dev/kmsg too (docs/safety.md).
                    let Some((head, msg)) = rec.split_once(';') else {
                        continue;
                    };
                    let prio = head.split(',').next().and_then(|p| p.parse::<u32>().ok());
                    if prio.is_some_and(|p| p < 8) {
                        out.push(msg.lines().next().unwrap_or("").to_string());
                    }
                }
                // Records overwritten before we read them: go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// Why the kernel kept a block online, from its log: the page it dumped ("unmovable page",
/// "migration failure") and that page's flags (`slab`, `lru|swapbacked`, ...).
pub fn offline_cause(log: &[String]) -> Option<String> {
    let at = log
        .iter()
        .position(|l| l.starts_with("page dumped because: "))?;
    let why = log[at].trim_start_matches("page dumped because: ").trim();
    let flags = log[..at]
        .iter()
        .rev()
        .find_map(|l| {
            let f = l.trim_start().strip_prefix("flags: ")?;
            let inner = f.split_once('(')?.1.split(')').next()?;
            Some(
                inner
                    .split('|')
                    .filter(|w| !w.contains('='))
                    .collect::<Vec<_>>()
                    .join("|"),
            )
        })
        .unwrap_or_default();
    // Newer kernels name a slab page by its type (`page_type: f5(slab)`), not by a flag.
    let page_type = log[..at].iter().rev().find_map(|l| {
        let t = l.trim_start().strip_prefix("page_type: ")?;
        Some(t.split_once('(')?.1.split(')').next()?.to_string())
    });
    let flags = match page_type {
        Some(t) if !flags.split('|').any(|f| f == t) => {
            if flags.is_empty() {
                t
            } else {
                format!("{t}|{flags}")
            }
        }
        _ => flags,
    };
    Some(if flags.is_empty() {
        why.to_string()
    } else {
        format!("{why}: {flags}")
    })
}

/// Put a journaled block back online the way it was, if it is offline: `Some(what was
/// done)`, `None` when it is online already.
pub fn restore(block: u32, online: Online) -> Result<Option<String>> {
    if state(block)? != "offline" {
        return Ok(None);
    }
    match write_state(block, online.state(), Duration::from_secs(10))? {
        StateWrite::Done { .. } => Ok(Some(format!(
            "put memory block {block} back {}",
            online.state()
        ))),
        StateWrite::Failed { errno, .. } => {
            bail!("writing {} to its state: {}", online.state(), errno.name())
        }
        StateWrite::Interrupted { .. } => bail!("onlining did not finish within 10 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_kinds_round_trip_and_follow_the_zone() {
        for o in [Online::Default, Online::Kernel, Online::Movable] {
            assert_eq!(Online::parse(o.state()), Some(o));
        }
        assert_eq!(Online::parse("offline"), None);
        assert_eq!(Online::of_zone("Movable"), Online::Movable);
        assert_eq!(Online::of_zone("Normal"), Online::Kernel);
        assert_eq!(Online::of_zone("none"), Online::Default);
    }

    #[test]
    fn a_dd_error_line_names_its_errno() {
        let busy = "dd: error writing '/sys/devices/system/memory/memory40/state': Device or resource busy\n";
        assert_eq!(errno_of_message(busy), Some(Errno(libc::EBUSY)));
        let inval = "dd: error writing 'x': Invalid argument";
        assert_eq!(errno_of_message(inval), Some(Errno(libc::EINVAL)));
        assert_eq!(errno_of_message("dd: something else"), None);
        assert_eq!(errno_of_message(""), None);
    }

    #[test]
    fn the_page_the_kernel_dumped_names_the_cause() {
        let log: Vec<String> = [
            "page:000000006ac2c81e refcount:1 mapcount:0 mapping:0000000000000000 index:0x0 pfn:0x130000",
            "head:000000006ac2c81e order:2 compound_mapcount:0 compound_pincount:0",
            "flags: 0x57ffffc0010200(slab|head|node=1|zone=2|lastcpupid=0x1fffff)",
            "raw: 0057ffffc0010200 dead000000000100 dead000000000122 ff19998f41034b00",
            "page dumped because: unmovable page",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            offline_cause(&log).as_deref(),
            Some("unmovable page: slab|head")
        );
        assert_eq!(offline_cause(&log[..3]), None);
        // 6.12: the slab is the page's type, not a flag.
        let log: Vec<String> = [
            "page: refcount:1 mapcount:0 mapping:0000000000000000 index:0xff29b7d630001880 pfn:0x130001",
            "flags: 0x57ffffc0000000(node=1|zone=2|lastcpupid=0x1fffff)",
            "page_type: f5(slab)",
            "raw: 0057ffffc0000000 ff29b7d501034600 dead000000000122 0000000000000000",
            "page dumped because: unmovable page",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(offline_cause(&log).as_deref(), Some("unmovable page: slab"));
    }

    #[test]
    fn only_block_states_are_written() {
        assert!(write_state(0, "offline; reboot", Duration::from_millis(1)).is_err());
    }

    /// dd's real message for a real errno (a sysctl refusing a value), read back as that
    /// errno: the parse is held to dd, not to a string typed here.
    #[test]
    fn dd_reports_a_write_error_this_module_reads_back() {
        let out = Command::new("dd")
            .args(["of=/proc/self/status", "conv=notrunc", "status=none"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(b"x")?;
                c.wait_with_output()
            });
        let Ok(out) = out else {
            eprintln!("skipped: no dd");
            return;
        };
        assert!(!out.status.success());
        let e = errno_of_message(&String::from_utf8_lossy(&out.stderr));
        assert!(e.is_some(), "{:?}", String::from_utf8_lossy(&out.stderr));
    }
}
