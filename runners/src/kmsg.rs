//! Kernel warnings: lines the kernel logs during a run, read from `/dev/kmsg` (from the
//! position at open, so older messages are ignored) and filtered for WARN, BUG, Oops,
//! "pinned" and "dax".

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

pub struct Kmsg {
    file: Option<File>,
    pub notrun: Option<String>,
}

/// Whether a kernel log line is one the oracle reports.
pub fn interesting(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    line.contains("WARN")
        || line.contains("BUG")
        || line.contains("Oops")
        || lower.contains("pinned")
        || lower.contains("dax")
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

    /// Every new message since the last call (each `read` returns one record).
    pub fn take(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(f) = self.file.as_mut() else {
            return out;
        };
        let mut buf = vec![0u8; 8192];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    // "prio,seq,usec,flags;message\n continuation lines"
                    let msg = rec.split_once(';').map(|(_, m)| m).unwrap_or(&rec);
                    out.push(msg.lines().next().unwrap_or("").to_string());
                }
                // EPIPE: messages were overwritten before we read them; go on from here.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::interesting;

    #[test]
    fn warnings_and_dax_lines_are_kept_the_rest_dropped() {
        assert!(interesting(
            "WARNING: CPU: 1 PID: 42 at mm/gup.c:123 __gup_longterm_locked"
        ));
        assert!(interesting("BUG: unable to handle page fault"));
        assert!(interesting("Oops: 0000 [#1] SMP"));
        assert!(interesting(
            "XFS (pmem0): DAX enabled. Warning: EXPERIMENTAL, use at your own risk"
        ));
        assert!(interesting("page still pinned after truncate"));
        assert!(!interesting("XFS (loop0): Mounting V5 Filesystem"));
        assert!(!interesting(
            "EXT4-fs (loop1): mounted filesystem with ordered data mode"
        ));
    }
}
