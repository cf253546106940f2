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

/// Build one of the independent C programs; `None` (with the reason printed) when there is
/// no C compiler.
fn build_c(name: &str) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/independent/{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("independent-{name}"));
    match Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
    {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!("{name}.c does not build:\n{}", stderr(&o)),
        Err(e) => {
            skip(name, &format!("no C compiler to build it ({e})"));
            None
        }
    }
}

/// `key=value key=value ... vmflags=rest of line` as the C loop prints it.
fn key_values(line: &str) -> std::collections::BTreeMap<String, String> {
    let (head, vmflags) = line.split_once("vmflags=").unwrap_or((line, ""));
    let mut m: std::collections::BTreeMap<String, String> = head
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.insert("vmflags".into(), vmflags.trim().to_string());
    m
}

/// What the kernel says of `len` bytes at `addr` of this process, in the C loop's
/// `--report` words: per page from /proc/self/pagemap (and /proc/kpageflags where it can be
/// read: root), and of the VMA from /proc/self/smaps. Test code of its own: it reads the
/// kernel's files, not anything pinstorm computes.
fn kernel_facts(addr: usize, len: usize) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let kpageflags = std::fs::File::open("/proc/kpageflags").ok();
    let (mut present, mut exclusive, mut shared, mut swapped, mut thp, mut compound) =
        (0i64, 0i64, 0i64, 0i64, 0i64, 0i64);
    let pages = len.div_ceil(4096);
    for i in 0..pages {
        let mut e = [0u8; 8];
        pagemap
            .read_exact_at(&mut e, ((addr / 4096 + i) * 8) as u64)
            .unwrap();
        let e = u64::from_ne_bytes(e);
        present += (e >> 63 & 1) as i64;
        swapped += (e >> 62 & 1) as i64;
        shared += (e >> 61 & 1) as i64;
        exclusive += (e >> 56 & 1) as i64;
        let pfn = e & ((1 << 55) - 1);
        if let (Some(k), true) = (&kpageflags, pfn != 0) {
            let mut f = [0u8; 8];
            if k.read_exact_at(&mut f, pfn * 8).is_ok() {
                let f = u64::from_ne_bytes(f);
                thp += (f >> 22 & 1) as i64;
                compound += ((f >> 15 & 1) | (f >> 16 & 1)) as i64;
            }
        }
    }
    if kpageflags.is_none() {
        (thp, compound) = (-1, -1);
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut inside, mut vmflags, mut eligible) = (false, String::new(), "-1".to_string());
    for line in smaps.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        if let Some((s, e)) = range.split_once('-').filter(|_| !range.ends_with(':')) {
            if let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16)) {
                inside = (s..e).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("VmFlags:") {
                vmflags = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("THPeligible:") {
                eligible = v.trim().to_string();
            }
        }
    }
    [
        ("pages", pages as i64),
        ("present", present),
        ("exclusive", exclusive),
        ("file_or_shared", shared),
        ("swapped", swapped),
        ("thp", thp),
        ("compound", compound),
        ("pmd_aligned", i64::from(addr % (2 << 20) == 0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([
        ("thp_eligible".to_string(), eligible),
        ("vmflags".to_string(), vmflags),
    ])
    .collect()
}

/// The memory pinstorm's bench pins is the memory the independent C loop pins (the yardstick
/// its cycle and baseline are held against, in workloads/benches/pin.rs): made by the same
/// backing code as a bench region, pinstorm's region has, by the kernel's own account, the
/// C loop's pages: as many present and exclusively mapped, none swapped, the same THP and
/// compound pages (root) or none, the same alignment to 2 MiB, and a VMA with the same flags
/// and THP eligibility. An anonymous region of pinstorm's that was left to first-touch
/// faults, got huge pages the C loop's did not, or sat at another alignment would differ.
#[test]
fn bench_regions_are_by_the_kernels_account_the_memory_the_independent_c_loop_pins() {
    use pinstorm_workloads::backing::{Access, BackingKind, MapKind, RegionSpec, SetupEnv};
    use pinstorm_workloads::scratch::ScratchRoot;
    use pinstorm_workloads::units::Size;

    let Some(c_loop) = build_c("pin_cycle_loop") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("pinstorm-witness-{}", std::process::id()));
    let root = ScratchRoot::open(&dir).unwrap();
    let run = root.new_run("witness").unwrap();
    let env = SetupEnv {
        is_root: is_root(),
        ..SetupEnv::default()
    };
    let mut compared = Vec::new();
    for (kind, size, map) in [
        (BackingKind::Anon, 2u64 << 20, MapKind::Private),
        (BackingKind::Anon, 4096, MapKind::Private),
        (BackingKind::Tmpfs, 2 << 20, MapKind::Shared),
    ] {
        let backing = kind.setup(&env, &run).unwrap();
        let region = backing
            .region(&RegionSpec {
                size: Size(size),
                map,
                access: Access::Rw,
            })
            .unwrap();
        let t = region.pin_target();
        let ours = kernel_facts(t.addr, t.len);
        let mut cmd = Command::new(&c_loop);
        cmd.args(["--report", "--size", &size.to_string()]);
        let file = format!("/dev/shm/pinstorm-witness-{}", std::process::id());
        if kind == BackingKind::Tmpfs {
            cmd.args(["--file", &file]);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let mut theirs = key_values(stdout(&o).trim());
        if kind == BackingKind::Tmpfs {
            // Where the kernel puts a shared file mapping that THP cannot use is not the
            // memory's business (no huge page to align for: thp = 0 on both sides).
            theirs.remove("pmd_aligned");
        }
        let ours: std::collections::BTreeMap<_, _> = ours
            .into_iter()
            .filter(|(k, _)| theirs.contains_key(k))
            .collect();
        assert_eq!(
            ours, theirs,
            "{kind} {size} {map:?}: pinstorm's bench region (left) is not the C loop's (right)"
        );
        compared.push(format!("{kind} {size}"));
        drop(region);
        drop(backing);
    }
    eprintln!("compared with the C loop's memory: {compared:?}");
    drop(run);
    drop(root);
    let _ = std::fs::remove_dir_all(&dir);
}
