//! pinstorm's probe against an independent probe of the same kernel: a small C program
//! (tests/independent/io_uring_probe.c) that shares no code with pinstorm makes the same
//! registrations with raw syscalls. Every cell must agree.
//!
//! For the page-cache filesystems the test builds its own loop-mounted filesystems with the
//! system tools (not pinstorm's code) and points both probes at them; pinstorm reaches them
//! through `--scratch-dir`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Build the independent probe; `None` (with the reason printed) when there is no C compiler.
fn build_probe() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent/io_uring_probe.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("independent-io-uring-probe");
    match Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
    {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!("the independent probe does not build:\n{}", stderr(&o)),
        Err(e) => {
            skip(
                "independent probe",
                &format!("no C compiler to build it ({e})"),
            );
            None
        }
    }
}

fn independent(probe: &Path, kind: &str, map: &str, access: &str, size: u64) -> String {
    let o = Command::new(probe)
        .args([kind, map, access, &size.to_string()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "independent probe failed: {}",
        stderr(&o)
    );
    stdout(&o).trim().to_string()
}

/// Compare every measured row of `pinstorm probe` with the independent probe run on
/// `kind(row)`.
fn compare(
    rows: &serde_json::Value,
    probe: &Path,
    kind: impl Fn(&serde_json::Value, usize) -> String,
) -> usize {
    let mut compared = 0;
    for (i, r) in rows.as_array().unwrap().iter().enumerate() {
        let ours = r["outcome"].as_str().unwrap();
        assert_ne!(ours, "notrun", "{r}");
        let theirs = independent(
            probe,
            &kind(r, i),
            r["map"].as_str().unwrap(),
            r["access"].as_str().unwrap(),
            r["size"].as_u64().unwrap(),
        );
        assert_eq!(
            ours, theirs,
            "pinstorm and the independent probe disagree on {r}"
        );
        compared += 1;
    }
    compared
}

#[test]
fn probe_agrees_with_an_independent_probe_on_in_memory_backings() {
    let Some(probe) = build_probe() else { return };
    let sb = Sandbox::new("indep-mem");
    let o = sb.run(&[
        "probe",
        "--pins",
        "io_uring",
        "--backings",
        "anon,memfd,tmpfs",
        "--format",
        "json",
    ]);
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    let n = compare(&json(&o), &probe, |r, i| {
        match r["backing"].as_str().unwrap() {
            "anon" => "anon".into(),
            "memfd" => "memfd".into(),
            // A tmpfs file: /dev/shm is tmpfs on every Debian machine; pinstorm's own tmpfs
            // mount (root) or /dev/shm (non-root) is the same filesystem type.
            "tmpfs" => format!("file:/dev/shm/pinstorm-indep-{}-{i}", std::process::id()),
            b => panic!("unexpected backing {b}"),
        }
    });
    assert_eq!(n, 12);
}

/// A loop-mounted filesystem made with the system's own tools, unmounted on drop.
struct LoopMount {
    mnt: PathBuf,
    dev: String,
}

impl LoopMount {
    fn new(base: &Path, fs: &str) -> Option<LoopMount> {
        let img = base.join(format!("{fs}.img"));
        let mnt = base.join(format!("{fs}.mnt"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let mkfs: Vec<&str> = match fs {
            "ext4" => vec!["mkfs.ext4", "-F", "-q"],
            "xfs" => vec!["mkfs.xfs", "-f", "-q"],
            "btrfs" => vec!["mkfs.btrfs", "-f", "-q"],
            _ => unreachable!(),
        };
        let ok = Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&img)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            skip(fs, &format!("{} is not installed or failed", mkfs[0]));
            return None;
        }
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let dev = stdout(&o).trim().to_string();
        let lm = LoopMount {
            mnt: mnt.clone(),
            dev: dev.clone(),
        };
        let o = Command::new("mount")
            .args(["-t", fs, &dev])
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let d = mnt.join("scratch");
        std::fs::create_dir(&d).unwrap();
        Some(lm)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn probe_agrees_with_an_independent_probe_on_ext4_xfs_and_btrfs() {
    if !is_root() {
        skip(
            "independent probe on loop filesystems",
            "loop-mounting filesystems needs root",
        );
        return;
    }
    let Some(probe) = build_probe() else { return };
    let _g = serial();
    let sb = Sandbox::new("indep-fs");
    let before = machine_state(&sb.base);
    let mut compared = Vec::new();
    for fs in ["ext4", "xfs", "btrfs"] {
        let Some(lm) = LoopMount::new(&sb.base, fs) else {
            continue;
        };
        let scratch = lm.mnt.join("scratch");
        let o = sb.run(&[
            "probe",
            "--pins",
            "io_uring",
            "--backings",
            "scratch-dir",
            "--scratch-dir",
            scratch.to_str().unwrap(),
            "--format",
            "json",
        ]);
        assert!(
            matches!(o.status.code(), Some(0) | Some(3)),
            "{fs}: {}",
            stderr(&o)
        );
        let rows = json(&o);
        for r in rows.as_array().unwrap() {
            assert_eq!(
                r["fs"], fs,
                "pinstorm must see the filesystem it was pointed at: {r}"
            );
        }
        let n = compare(&rows, &probe, |_, i| {
            format!("file:{}/independent-{i}", scratch.display())
        });
        assert_eq!(n, 4, "{fs}");
        // pinstorm removed its own subdirectory and touched nothing else of the scratch dir.
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "{fs}: files left in the scratch dir"
        );
        drop(lm);
        compared.push(fs);
    }
    // A comparison of no filesystem would pass vacuously: say which were compared, and fail
    // if none was.
    eprintln!("compared with the independent probe on: {compared:?}");
    assert!(!compared.is_empty(), "no filesystem could be compared");
    assert_left_as_found(&sb.base, &before);
}
