//! The scratch journal: what a run did that must be undone, written before each action, so a
//! later run can undo what a killed one left.
//!
//! A journal is trusted only inside a run directory that passed the ownership checks
//! ([`super::owned`]), as a regular file of ours (mode 0600, one link) whose header names the
//! run directory's own run id. Even then every entry is checked again before it is acted on,
//! because a journal is data on disk: mounts and loop images only as direct children of the
//! run directory, directories only as pinstorm's marked subdirectory of a user scratch
//! directory, sysctls only from [`Sysctl`]'s allow-list with an integer value. Anything else
//! is reported and skipped, never acted on.

use std::path::{Path, PathBuf};

use super::owned::plain_name;
use crate::sysctl::Sysctl;

/// The first word of a journal's header line.
pub const MAGIC: &str = "pinstorm-journal";
/// The journal format this code writes and replays.
pub const FORMAT: u32 = 2;

/// What a run did that must be undone, one journal line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalEntry {
    Owner(u32),
    /// A sysctl and its value before pinstorm changed it.
    Sysctl {
        sysctl: Sysctl,
        original: String,
    },
    /// A mount point: a direct child of the run directory.
    Mount(String),
    /// A loop device's backing image: a direct child of the run directory.
    Loop(String),
    /// pinstorm's subdirectory `name` in the user's scratch directory `parent`.
    Dir {
        parent: PathBuf,
        name: String,
    },
    /// A memory block (`/sys/devices/system/memory/memoryN`) about to be taken offline by a
    /// memory operation, and how it was online: put back that way if it is left offline.
    MemoryBlock {
        block: u32,
        online: crate::memblock::Online,
    },
}

impl JournalEntry {
    pub fn line(&self) -> String {
        match self {
            JournalEntry::Owner(pid) => format!("owner\t{pid}"),
            JournalEntry::Sysctl { sysctl, original } => format!("sysctl\t{sysctl}\t{original}"),
            JournalEntry::Mount(n) => format!("mount\t{n}"),
            JournalEntry::Loop(n) => format!("loop\t{n}"),
            JournalEntry::Dir { parent, name } => format!("dir\t{}\t{name}", parent.display()),
            JournalEntry::MemoryBlock { block, online } => {
                format!("memory-block\t{block}\t{}", online.state())
            }
        }
    }

    /// Parse one line; `Err` says why a line is refused (the replay reports it).
    pub fn parse(line: &str) -> Result<JournalEntry, String> {
        let f: Vec<&str> = line.split('\t').collect();
        let refuse = |why: &str| Err(format!("{why}: {:?}", truncate(line)));
        match f.as_slice() {
            ["owner", pid] => pid
                .parse()
                .map(JournalEntry::Owner)
                .or_else(|_| refuse("bad pid")),
            ["sysctl", name, original] => {
                let Some(sysctl) = Sysctl::from_name(name) else {
                    return refuse("not a sysctl pinstorm changes");
                };
                if !sysctl.valid_value(original) {
                    return refuse("not a value that sysctl holds");
                }
                Ok(JournalEntry::Sysctl {
                    sysctl,
                    original: original.to_string(),
                })
            }
            ["mount", name] if plain_name(name) => Ok(JournalEntry::Mount(name.to_string())),
            ["loop", name] if plain_name(name) => Ok(JournalEntry::Loop(name.to_string())),
            ["dir", parent, name] => {
                let p = Path::new(parent);
                if !p.is_absolute()
                    || p.components().any(|c| c == std::path::Component::ParentDir)
                    || !plain_name(name)
                {
                    return refuse("not an absolute directory and a plain name");
                }
                Ok(JournalEntry::Dir {
                    parent: p.to_path_buf(),
                    name: name.to_string(),
                })
            }
            ["memory-block", n, online] => {
                let Some(online) = crate::memblock::Online::parse(online) else {
                    return refuse("not a way a memory block is onlined");
                };
                match n.parse::<u32>() {
                    Ok(block) if block.to_string() == *n => {
                        Ok(JournalEntry::MemoryBlock { block, online })
                    }
                    _ => refuse("not a memory block number"),
                }
            }
            _ => refuse("not a journal entry this version writes"),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The header line of a journal written by this version for run `run_id`.
pub fn header(run_id: &str) -> String {
    format!(
        "{MAGIC}\t{FORMAT}\t{run_id}\tpinstorm {}",
        env!("CARGO_PKG_VERSION")
    )
}

/// A journal read back: its entries, and the lines that were refused.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Journal {
    pub entries: Vec<JournalEntry>,
    pub refused: Vec<String>,
}

/// Parse a whole journal that must belong to run `run_id`. `Err` when the header is not
/// ours: then nothing in the file is acted on.
pub fn parse(text: &str, run_id: &str) -> Result<Journal, String> {
    let mut lines = text.lines();
    let head = lines.next().unwrap_or("");
    let h: Vec<&str> = head.split('\t').collect();
    match h.as_slice() {
        [MAGIC, format, id, _tool] => {
            if format.parse::<u32>().ok() != Some(FORMAT) {
                return Err(format!(
                    "journal format {format:?}, this pinstorm reads {FORMAT}"
                ));
            }
            if *id != run_id {
                return Err(format!(
                    "the journal names run {:?}, not its own directory's run {run_id:?}",
                    truncate(id)
                ));
            }
        }
        _ => return Err("no pinstorm journal header".into()),
    }
    let mut j = Journal::default();
    for line in lines {
        match JournalEntry::parse(line) {
            Ok(e) => j.entries.push(e),
            // A line cut short by SIGKILL is expected at the end; report it all the same.
            Err(why) => j.refused.push(why),
        }
    }
    Ok(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_round_trip() {
        for e in [
            JournalEntry::Owner(42),
            JournalEntry::Sysctl {
                sysctl: Sysctl::NrHugepages,
                original: "0".into(),
            },
            JournalEntry::Sysctl {
                sysctl: Sysctl::LeaseBreakTime,
                original: "45".into(),
            },
            JournalEntry::Mount("xfs.mnt".into()),
            JournalEntry::Loop("xfs.img".into()),
            JournalEntry::Dir {
                parent: "/scratch".into(),
                name: "pinstorm.run-x".into(),
            },
            JournalEntry::MemoryBlock {
                block: 40,
                online: crate::memblock::Online::Kernel,
            },
            JournalEntry::MemoryBlock {
                block: 0,
                online: crate::memblock::Online::Movable,
            },
        ] {
            assert_eq!(JournalEntry::parse(&e.line()), Ok(e));
        }
    }

    #[test]
    fn forged_entries_are_refused_with_a_reason() {
        for line in [
            "sysctl\t../../etc/shadow\tx",
            "sysctl\tvm/../../../etc/passwd\t0",
            "sysctl\tkernel/core_pattern\t|/tmp/x",
            "sysctl\tvm/nr_hugepages\t1; rm -rf /",
            "sysctl\tvm/nr_hugepages\t",
            "mount\t/",
            "mount\t/home",
            "mount\t..",
            "mount\ta/b",
            "loop\t/etc/passwd",
            "dir\t/home/user/thesis\t",
            "dir\trelative\tpinstorm.run-x",
            "dir\t/scratch/../etc\tpinstorm.run-x",
            "dir\t/scratch\t../x",
            "owner\t-1",
            "memory-block\t-1\tonline",
            "memory-block\t01\tonline",
            "memory-block\t../../x\tonline",
            "memory-block\t3\toffline",
            "memory-block\t3\tonline; reboot",
            "memory-block\t3",
            "bogus\tline",
            "",
        ] {
            let r = JournalEntry::parse(line);
            assert!(r.is_err(), "{line:?} was accepted: {r:?}");
        }
    }

    #[test]
    fn a_journal_without_our_header_or_for_another_run_is_not_ours() {
        assert!(parse("dir\t/victim\tx\n", "a").is_err());
        assert!(parse(&format!("{}\nmount\tx.mnt\n", header("b")), "a").is_err());
        let text = format!("{MAGIC}\t1\ta\tpinstorm 0.0.1\nmount\tx.mnt\n");
        assert!(parse(&text, "a").unwrap_err().contains("format"));
        let j = parse(
            &format!("{}\nmount\tx.mnt\nsysctl\t../x\t1\n", header("a")),
            "a",
        )
        .unwrap();
        assert_eq!(j.entries, vec![JournalEntry::Mount("x.mnt".into())]);
        assert_eq!(j.refused.len(), 1);
    }
}
