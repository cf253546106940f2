//! Reading `/proc/self/mountinfo` and `/sys/block/loop*`: which filesystem a path lives on,
//! with which options, and which loop devices are backed by which files.
//!
//! Read-only: this module never mounts, unmounts or detaches anything.

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo` (see proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Per-mount options followed by the superblock's options, comma separated.
    pub options: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 3 {
                return None;
            }
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(l[4])),
                fs_type: r[0].to_string(),
                source: unescape(r[1]),
                options: format!("{},{}", l[5], r[2]),
            })
        })
        .collect()
}

pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// The mount a path lives on: the entry with the longest mount point that is a prefix of
/// the (canonical) path; the last such entry wins, as the kernel stacks mounts.
pub fn mount_of(path: &Path) -> Option<MountEntry> {
    let canon = path.canonicalize().ok()?;
    mounts()
        .into_iter()
        .filter(|m| canon.starts_with(&m.mount_point))
        .fold(None, |best: Option<MountEntry>, m| match &best {
            Some(b) if b.mount_point.as_os_str().len() > m.mount_point.as_os_str().len() => best,
            _ => Some(m),
        })
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Attached loop devices and their backing files, from `/sys/block/loop*/loop/backing_file`.
pub fn loop_devices() -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            let b = b.trim_end_matches('\n');
            // An unlinked backing file is shown with a " (deleted)" suffix.
            let b = b.strip_suffix(" (deleted)").unwrap_or(b);
            out.push((PathBuf::from("/dev").join(&name), PathBuf::from(b)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let text = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext4 /dev/loop0 rw,errors=continue\n\
                    37 35 0:5 / /dev/shm rw - tmpfs tmpfs rw,size=1024k\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[0].source, "/dev/loop0");
        assert_eq!(m[0].options, "rw,noatime,rw,errors=continue");
        assert_eq!(m[1].fs_type, "tmpfs");
    }
}
