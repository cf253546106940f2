//! What pinstorm refuses to trust: scratch roots it did not make, run directories and
//! journals that are not provably its own, and journal entries that point outside its
//! directories. Each test plants the hostile thing and checks the victim is untouched.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

/// A fresh directory for one test (mode 0755, ours), removed on drop.
struct Base(PathBuf);

impl Base {
    fn new(name: &str) -> Base {
        let p = std::env::temp_dir().join(format!("pinstorm-trust-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Base(p)
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A victim directory with one file whose bytes the test checks afterwards.
fn victim(base: &Path) -> PathBuf {
    let v = base.join("victim");
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("thesis.tex"), "years of work\n").unwrap();
    v
}

fn intact(v: &Path) -> bool {
    std::fs::read_to_string(v.join("thesis.tex"))
        .ok()
        .as_deref()
        == Some("years of work\n")
}

fn err(r: Result<ScratchRoot>) -> String {
    let e = r.err().expect("must be refused");
    assert!(
        e.chain().any(|c| c.is::<Untrusted>()),
        "not an Untrusted error: {e:#}"
    );
    format!("{e:#}")
}

#[test]
fn a_scratch_root_pinstorm_did_not_make_is_refused_and_left_untouched() {
    let b = Base::new("foreign");
    let root = b.0.join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let v = victim(&b.0);
    std::fs::create_dir(root.join("run-x")).unwrap();
    std::fs::write(
        root.join("run-x/journal"),
        format!("dir\t{}\n", v.display()),
    )
    .unwrap();
    std::fs::write(root.join("notes.txt"), "mine\n").unwrap();
    let e = err(ScratchRoot::open(&root));
    assert!(e.contains("not made by pinstorm"), "{e}");
    assert!(intact(&v));
    assert!(root.join("run-x/journal").exists() && root.join("notes.txt").exists());
    assert!(!root.join(owned::MARKER).exists(), "no marker was added");
}

#[test]
fn a_symlinked_scratch_root_is_refused() {
    let b = Base::new("symlink");
    let real = b.0.join("real");
    ScratchRoot::open(&real).unwrap();
    symlink(&real, b.0.join("link")).unwrap();
    let e = err(ScratchRoot::open(&b.0.join("link")));
    assert!(e.contains("symlink"), "{e}");
}

#[test]
fn a_scratch_root_writable_by_others_is_refused() {
    let b = Base::new("mode");
    let root = b.0.join("root");
    drop(ScratchRoot::open(&root).unwrap());
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = err(ScratchRoot::open(&root));
    assert!(e.contains("writable by group or others"), "{e}");
}

#[test]
fn a_scratch_root_in_a_directory_others_can_rename_in_is_refused() {
    let b = Base::new("parent");
    let open = b.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = err(ScratchRoot::open(&open.join("root")));
    assert!(e.contains("without the sticky bit"), "{e}");
    assert!(!open.join("root").exists(), "nothing was created");
    // Sticky, like /tmp: others cannot rename what is ours, so it is fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    ScratchRoot::open(&open.join("root")).unwrap();
}

#[test]
fn a_scratch_root_owned_by_another_user_is_refused() {
    if !crate::is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test must take its real path there"
        );
        eprintln!("skipped: needs root to give a directory to another user");
        return;
    }
    let b = Base::new("owner");
    let root = b.0.join("root");
    drop(ScratchRoot::open(&root).unwrap());
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    let e = err(ScratchRoot::open(&root));
    assert!(e.contains("owned by uid 65534"), "{e}");
}

/// A run directory of ours with a journal of ours holding `lines` after a valid header.
fn plant_run(root: &ScratchRoot, id: &str, lines: &[String]) -> PathBuf {
    let run = root.new_run(id).unwrap();
    for l in lines {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(run.dir().join(JOURNAL))
            .unwrap();
        writeln!(f, "{l}").unwrap();
    }
    let dir = run.dir().to_path_buf();
    // As if the run was killed: nothing of it is undone.
    std::mem::forget(run);
    dir
}

#[test]
fn forged_journal_entries_are_refused_and_change_nothing() {
    let b = Base::new("forged");
    let v = victim(&b.0);
    let root = ScratchRoot::open(&b.0.join("root")).unwrap();
    let lines = vec![
        format!("dir\t{}\tthesis.tex", v.display()),
        format!("dir\t{}\tpinstorm.run-f", b.0.display()),
        format!("dir\t{}\t{}", b.0.display(), "victim"),
        "sysctl\t../../../etc/hostname\tx".to_string(),
        "sysctl\tkernel/core_pattern\t|/bin/sh".to_string(),
        "mount\t/".to_string(),
        format!("mount\t{}", v.display()),
        "loop\t/etc/passwd".to_string(),
    ];
    let hostname = std::fs::read("/etc/hostname").ok();
    let dir = plant_run(&root, "f", &lines);
    // Something named like pinstorm's subdirectory, but not made by this run.
    let fake = b.0.join("pinstorm.run-f");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("data"), "not pinstorm's\n").unwrap();
    let out: Vec<Cleaned> = root
        .leftover_runs()
        .into_iter()
        .map(|l| root.clean(l))
        .collect();
    assert_eq!(out.len(), 1);
    let problems = out[0].problems.join("\n");
    assert_eq!(
        problems.matches("refused").count(),
        lines.len(),
        "every forged line is refused:\n{problems}"
    );
    assert!(intact(&v));
    assert_eq!(
        std::fs::read_to_string(fake.join("data")).unwrap(),
        "not pinstorm's\n"
    );
    assert_eq!(std::fs::read("/etc/hostname").ok(), hostname);
    assert!(!dir.exists(), "the run directory itself, ours, is removed");
}

#[test]
fn run_directories_and_journals_that_are_not_ours_are_left_alone() {
    let b = Base::new("notours");
    let v = victim(&b.0);
    let root = ScratchRoot::open(&b.0.join("root")).unwrap();
    let r = root.path().to_path_buf();
    let entry = format!("dir\t{}\tvictim", b.0.display());
    // No header: an old or forged journal.
    std::fs::create_dir(r.join("run-a")).unwrap();
    std::fs::write(r.join("run-a/journal"), format!("{entry}\n")).unwrap();
    // A header for another run.
    std::fs::create_dir(r.join("run-b")).unwrap();
    std::fs::write(
        r.join("run-b/journal"),
        format!("{}\n{entry}\n", journal::header("c")),
    )
    .unwrap();
    // The journal is a symlink to one that would be valid.
    std::fs::create_dir(r.join("run-d")).unwrap();
    std::fs::write(
        b.0.join("elsewhere"),
        format!("{}\n{entry}\n", journal::header("d")),
    )
    .unwrap();
    symlink(b.0.join("elsewhere"), r.join("run-d/journal")).unwrap();
    // The run directory is a symlink to a directory elsewhere.
    std::fs::create_dir(b.0.join("run-e")).unwrap();
    std::fs::write(
        b.0.join("run-e/journal"),
        format!("{}\n", journal::header("e")),
    )
    .unwrap();
    symlink(b.0.join("run-e"), r.join("run-e")).unwrap();
    // A journal others may write.
    std::fs::create_dir(r.join("run-g")).unwrap();
    std::fs::write(
        r.join("run-g/journal"),
        format!("{}\n", journal::header("g")),
    )
    .unwrap();
    std::fs::set_permissions(
        r.join("run-g/journal"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let lines: Vec<String> = root
        .leftover_runs()
        .into_iter()
        .flat_map(|l| root.clean(l).problems)
        .collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(
        lines.iter().all(|l| l.starts_with("left alone")),
        "{lines:#?}"
    );
    assert!(intact(&v));
    for d in ["run-a", "run-b", "run-d", "run-e", "run-g"] {
        assert!(r.join(d).exists(), "{d} was removed");
    }
    assert!(b.0.join("run-e/journal").exists());
}

#[test]
fn a_killed_runs_subdirectory_of_a_user_scratch_dir_is_removed_only_if_ours() {
    let b = Base::new("userdir");
    let user = b.0.join("scratch");
    std::fs::create_dir(&user).unwrap();
    let root = ScratchRoot::open(&b.0.join("root")).unwrap();
    // Run k made its subdirectory and was killed.
    let run = root.new_run("k").unwrap();
    let sub = run.user_subdir(&user, "--scratch-dir").unwrap();
    std::fs::write(sub.path().join("region-0"), "x").unwrap();
    let sub_path = sub.path().to_path_buf();
    drop(sub);
    std::mem::forget(run);
    // Run m journaled its subdirectory but was killed before making it; someone else has
    // made a directory of that name since.
    let run = root.new_run("m").unwrap();
    run.record(&JournalEntry::Dir {
        parent: user.clone(),
        name: "pinstorm.run-m".into(),
    })
    .unwrap();
    std::mem::forget(run);
    let theirs = user.join("pinstorm.run-m");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("data"), "theirs\n").unwrap();
    let cleaned: Vec<Cleaned> = root
        .leftover_runs()
        .into_iter()
        .map(|l| root.clean(l))
        .collect();
    assert!(!sub_path.exists(), "{cleaned:#?}");
    assert_eq!(
        std::fs::read_to_string(theirs.join("data")).unwrap(),
        "theirs\n"
    );
    let problems: Vec<&String> = cleaned.iter().flat_map(|c| &c.problems).collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("no .pinstorm marker"), "{problems:#?}");
}

#[test]
fn an_existing_name_is_never_adopted_as_pinstorms_subdirectory() {
    let b = Base::new("adopt");
    let user = b.0.join("scratch");
    std::fs::create_dir(&user).unwrap();
    let root = ScratchRoot::open(&b.0.join("root")).unwrap();
    let run = root.new_run("z").unwrap();
    std::fs::create_dir(user.join("pinstorm.run-z")).unwrap();
    let e = run.user_subdir(&user, "--scratch-dir").unwrap_err();
    assert!(format!("{e:#}").contains("File exists"), "{e:#}");
}

#[test]
fn removal_never_follows_symlinks_out_of_our_directories() {
    let b = Base::new("rmlink");
    let v = victim(&b.0);
    let root = ScratchRoot::open(&b.0.join("root")).unwrap();
    let run = root.new_run("s").unwrap();
    symlink(&v, run.dir().join("link-to-victim")).unwrap();
    std::fs::create_dir(run.dir().join("sub")).unwrap();
    symlink(v.join("thesis.tex"), run.dir().join("sub/file-link")).unwrap();
    let dir = run.dir().to_path_buf();
    drop(run);
    assert!(!dir.exists());
    assert!(intact(&v));
}

/// A journaled memory block is put back online only if it reads `offline`: a block that is
/// online (or does not exist) is left alone, and forged memory-block lines are refused.
#[test]
fn journaled_memory_blocks_are_onlined_only_when_offline() {
    let b = Base::new("memblock");
    let root = ScratchRoot::open(&b.0.join("root")).unwrap();
    // The lowest block of this machine, if it has memory blocks (it is online: we run).
    let online_block = std::fs::read_dir(crate::memblock::MEMORY)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("memory")?
                .parse::<u32>()
                .ok()
        })
        .min();
    let mut lines = vec![
        "memory-block\t4000000000\tonline_kernel".to_string(),
        "memory-block\t../../../etc\tonline".to_string(),
        "memory-block\t7\toffline".to_string(),
    ];
    let before = online_block.map(|n| crate::memblock::state(n).unwrap());
    if let Some(n) = online_block {
        lines.push(format!("memory-block\t{n}\tonline_movable"));
    }
    plant_run(&root, "m", &lines);
    let out: Vec<Cleaned> = root
        .leftover_runs()
        .into_iter()
        .map(|l| root.clean(l))
        .collect();
    assert_eq!(out.len(), 1);
    let problems = out[0].problems.join("\n");
    assert_eq!(problems.matches("refused").count(), 2, "{problems}");
    assert!(problems.contains("memory4000000000"), "{problems}");
    assert!(
        !out[0].actions.iter().any(|a| a.contains("memory block")),
        "{:?}",
        out[0].actions
    );
    if let Some(n) = online_block {
        assert_eq!(Some(crate::memblock::state(n).unwrap()), before);
    }
}
