//! pinstorm as root must not be turned against its own machine (docs/safety.md): a local
//! user who plants scratch roots and journals, or races the names of files pinstorm made,
//! changes nothing outside pinstorm's own files. Each test plants the attack, runs the real
//! binary or library as root, and checks the victims byte for byte.
//!
//! These need root (and user nobody) and run in CI; elsewhere they skip with the reason, and
//! with `CI` set a test that cannot take its real path fails.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

fn need_root_and_nobody(test: &str) -> bool {
    // Only the attacker's shell runs as nobody; pinstorm itself runs as root.
    let setpriv = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/true",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let why = if !is_root() {
        Some("needs root".to_string())
    } else if !setpriv {
        Some("setpriv cannot run a command as user nobody (install util-linux)".to_string())
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {w}; CI runs as root and must take the real path")
        }
        Some(w) => {
            eprintln!("skipped {test}: {w}");
            false
        }
    }
}

/// Every file, directory and link below `dir`: its kind, owner, mode and content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let what = if m.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).ok())
            } else if m.is_dir() {
                walk(&p, out);
                "dir".to_string()
            } else {
                let content = std::fs::read(&p).unwrap_or_default();
                format!("file {} {:x}", content.len(), fnv(&content))
            };
            out.insert(
                p,
                format!("{what} uid {} mode {:o}", m.uid(), m.mode() & 0o7777),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

/// Run a shell snippet as user nobody.
fn as_nobody(script: &str) {
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/sh",
            "-ec",
            script,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "as nobody: {script}\n{}", stderr(&o));
}

/// Victims outside pinstorm's directories: a directory of files, a mount, a file a sysctl
/// path traversal would reach, and an attached loop device. Undone on drop.
struct Victims {
    base: PathBuf,
    dir: PathBuf,
    mnt: PathBuf,
    file: PathBuf,
    image: PathBuf,
    loop_dev: String,
}

impl Victims {
    fn new(base: &Path) -> Victims {
        let dir = base.join("victim");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("thesis.tex"), "years of work\n").unwrap();
        let mnt = base.join("victim-mnt");
        std::fs::create_dir(&mnt).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "victim"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting the victim tmpfs");
        std::fs::write(mnt.join("data"), "on a mount\n").unwrap();
        let file = base.join("victim-sysctl");
        std::fs::write(&file, "original\n").unwrap();
        let image = base.join("victim.img");
        std::fs::write(&image, vec![0x5a; 1 << 20]).unwrap();
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {}", stderr(&o));
        Victims {
            base: base.to_path_buf(),
            dir,
            mnt,
            file,
            image,
            loop_dev: stdout(&o).trim().to_string(),
        }
    }

    /// Journal lines aimed at every victim, in the format of `pinstorm` before the
    /// journal had a header, and in today's format (which must still be refused).
    fn journal_lines(&self) -> String {
        let traversal = format!("../../..{}", self.file.display());
        [
            format!("dir\t{}", self.dir.display()),
            format!("mount\t{}", self.mnt.display()),
            format!("sysctl\t{traversal}\tPWNED"),
            format!("loop\t{}", self.image.display()),
            format!("dir\t{}\tthesis.tex", self.dir.display()),
            format!("dir\t{}\tvictim", self.base.display()),
            format!("mount\t{}", self.mnt.display()),
        ]
        .join("\n")
            + "\n"
    }

    fn mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(self.mnt.to_str().unwrap()))
    }

    fn loop_attached(&self) -> bool {
        let name = self.loop_dev.trim_start_matches("/dev/");
        std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
            .is_ok_and(|b| b.trim() == self.image.to_str().unwrap())
    }
}

impl Drop for Victims {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loop_dev)
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// As nobody, make `root` look like a pinstorm scratch root (marker, lock) with a killed
/// run whose journal names every victim, in the old format and with today's header.
fn plant_scratch_root(root: &Path, v: &Victims) {
    let lines = v.journal_lines();
    let header = "pinstorm-journal\t2\tx\tpinstorm 0.1.0";
    as_nobody(&format!(
        "mkdir -p '{r}/run-x' '{r}/run-y' && chmod 0777 '{r}' && printf 'pinstorm scratch root\\n' > '{r}/.pinstorm' && : > '{r}/.lock' && printf '%s' '{lines}' > '{r}/run-x/journal' && printf '%s\\n%s' '{header}' '{lines}' > '{r}/run-y/journal'",
        r = root.display(),
    ));
}

#[test]
fn planted_scratch_roots_and_journals_change_nothing_outside_pinstorms_files() {
    if !need_root_and_nobody("planted journals") {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("planted");
    // Like /tmp: everyone may create entries, nobody may rename others'.
    std::fs::set_permissions(
        &sb.base,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let v = Victims::new(&sb.base);
    // The pre-created roots: the one named with --scratch-root, the old default
    // ($TMPDIR/pinstorm) and the fallback default ($TMPDIR/pinstorm-0).
    let named = sb.base.join("shared-root");
    for r in [
        &named,
        &sb.base.join("pinstorm"),
        &sb.base.join("pinstorm-0"),
    ] {
        plant_scratch_root(r, &v);
    }
    let results = sb.base.join("results");
    let before = snapshot(&sb.base);
    let state_before = machine_state(&sb.base);

    // Named explicitly: refused as bad input, nothing done.
    for args in [&["run", "quick"][..], &["cleanup"][..]] {
        let o = pinstorm()
            .arg("--results")
            .arg(&results)
            .arg("--scratch-root")
            .arg(&named)
            .arg("-q")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("owned by uid 65534"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // The default scratch root with TMPDIR pointing at the planted ones: root's default
    // is one nobody can pre-create, and the planted ones are never looked at.
    for args in [&["run", "quick"][..], &["cleanup"][..]] {
        let o = pinstorm()
            .env("TMPDIR", &sb.base)
            .env_remove("PINSTORM_SCRATCH_ROOT")
            .env_remove("XDG_RUNTIME_DIR")
            .arg("--results")
            .arg(&results)
            .arg("-q")
            .args(args)
            .output()
            .unwrap();
        assert!(
            matches!(o.status.code(), Some(0) | Some(3)),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let after = snapshot(&sb.base);
    let changed: Vec<_> = before
        .iter()
        .filter(|(p, _)| !p.starts_with(&results))
        .filter(|(p, s)| after.get(*p) != Some(*s))
        .collect();
    assert!(changed.is_empty(), "changed or removed: {changed:#?}");
    let added: Vec<_> = after
        .keys()
        .filter(|p| !p.starts_with(&results) && !before.contains_key(*p))
        .collect();
    assert!(
        added.is_empty(),
        "created outside pinstorm's files: {added:#?}"
    );
    assert!(v.mounted(), "the victim mount is still there");
    assert!(
        v.loop_attached(),
        "the victim loop device is still attached"
    );
    assert_eq!(
        machine_state(&sb.base).nr_hugepages,
        state_before.nr_hugepages
    );
    assert_eq!(
        machine_state(&sb.base).lease_break_time,
        state_before.lease_break_time
    );
}

#[test]
fn a_scratch_root_holding_foreign_files_and_run_trees_is_refused_and_left_untouched() {
    if !need_root_and_nobody("foreign scratch root") {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("foreignroot");
    let root = sb.base.join("mine");
    std::fs::create_dir_all(root.join("run-old")).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(root.join("thesis.tex"), "years of work\n").unwrap();
    std::fs::write(
        root.join("run-old/journal"),
        format!("owner\t1\ndir\t{}\n", sb.base.display()),
    )
    .unwrap();
    let before = snapshot(&sb.base);
    for args in [&["run", "quick"][..], &["cleanup"][..], &["probe"][..]] {
        let o = pinstorm()
            .arg("--results")
            .arg(&sb.results)
            .arg("--scratch-root")
            .arg(&root)
            .arg("-q")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("not made by pinstorm"), "{args:?}: {e}");
        assert!(e.contains("name a path that does not exist yet"), "{e}");
    }
    let after = snapshot(&sb.base);
    let changed: Vec<_> = before
        .iter()
        .filter(|(p, s)| after.get(*p) != Some(*s))
        .collect();
    assert!(changed.is_empty(), "{changed:#?}");
}

#[test]
fn renaming_the_loop_image_mid_setup_never_formats_or_mounts_another_file() {
    use pinstorm_workloads::backing::{BackingKind, LoopFs};
    use pinstorm_workloads::scratch::ScratchRoot;
    if !need_root_and_nobody("swap race") {
        return;
    }
    if !Path::new("/usr/sbin/mkfs.xfs").exists() && !Path::new("/sbin/mkfs.xfs").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI installs xfsprogs");
        eprintln!("skipped swap race: mkfs.xfs not installed");
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("swaprace");
    // The file an attacker wants formatted: as large as an image, with data to lose.
    let victim = sb.base.join("victim.img");
    let f = std::fs::File::create(&victim).unwrap();
    f.set_len(512 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xa5; 1 << 20], 0).unwrap();
    drop(f);
    let victim_sum = || fnv(&std::fs::read(&victim).unwrap()[..2 << 20]);
    let sum = victim_sum();
    let root = ScratchRoot::open(&sb.scratch).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    // The racer has the run directory's own uid (the strongest case: a user of another uid
    // cannot even enter it): whenever an image appears, it moves it away and puts a symlink
    // to the victim in its place.
    let racer = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (scratch, victim) = (sb.scratch.clone(), victim.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for e in std::fs::read_dir(&scratch).into_iter().flatten().flatten() {
                    let img = e.path().join("xfs.img");
                    let is_file = std::fs::symlink_metadata(&img).is_ok_and(|m| m.is_file());
                    if is_file
                        && std::fs::rename(&img, e.path().join("moved.img")).is_ok()
                        && std::os::unix::fs::symlink(&victim, &img).is_ok()
                    {
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut outcomes = Vec::new();
    for i in 0..4 {
        let run = root.new_run(&format!("race{i}")).unwrap();
        match LoopFs::create(BackingKind::Xfs, &Default::default(), &run) {
            Ok(l) => {
                // Mounted: it must be our image's filesystem, not the victim.
                let dev = l.device().unwrap().to_path_buf();
                let backing = std::fs::read_to_string(format!(
                    "/sys/block/{}/loop/backing_file",
                    dev.file_name().unwrap().to_string_lossy()
                ))
                .unwrap();
                assert!(!backing.contains("victim"), "{backing}");
                outcomes.push("mounted".to_string());
                drop(l);
            }
            Err(e) => outcomes.push(format!("notrun: {}", e.0)),
        }
        assert_eq!(victim_sum(), sum, "the victim was written ({outcomes:?})");
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(
        swaps.load(Ordering::Relaxed) > 0,
        "the racer never swapped an image, so this proved nothing: {outcomes:?}"
    );
    let loops = machine_state(&sb.base).loops_below;
    assert!(
        loops.iter().all(|l| !l.contains("victim")),
        "a loop device is backed by the victim: {loops:?}"
    );
    assert_eq!(victim_sum(), sum);
    eprintln!(
        "swap race: {} swaps; outcomes {outcomes:?}",
        swaps.load(Ordering::Relaxed)
    );
}
