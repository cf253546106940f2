//! The lab's first step as a guest's PID 1: hide udev and systemd's configuration from
//! virtme-ng's init, then become it.
//!
//! Why: virtme-ng-init runs `systemd-tmpfiles --boot` when `/etc/systemd` exists and udev's
//! coldplug and `udevadm settle` when it finds `systemd-udevd`, and only then the guest agent.
//! Under TCG on a 2-core machine that was 10-30 s of a 6.1 guest's boot (the console shows
//! it between "running systemd-tmpfiles" and "udev is done"), and the lab needs neither:
//! devtmpfs makes the nodes it uses (`/dev/pmem*`, `/dev/dax*`, `/dev/infiniband/uverbs*`)
//! and the agent loads its modules itself. virtme-ng has no option to skip them, so the host
//! boots a small shell script of its own as `init=` (the kernel command line is rewritten by
//! `vm::with_lab_init`). It lays an overlay with whiteouts over `/etc` and `/usr` of the
//! read-only root (virtme-ng's own writable overlays stack on top and see through it), and
//! execs the real init as PID 1. Whatever fails there, the real init still runs, with udev:
//! slower, not broken.
//!
//! A script, not this binary: pinstorm is large (a debug build is over 100 MB) and every page
//! of it comes over 9p; `/bin/sh`, `mount` and `mknod` are small.

/// Paths hidden from virtme-ng-init, as (overlay mount point, path under it).
pub const HIDDEN: &[(&str, &str)] = &[("/etc", "systemd"), ("/usr", "lib/systemd/systemd-udevd")];

/// Where the overlays' upper and work directories live (a tmpfs that virtme-ng-init's own
/// /run later covers; the overlays keep it).
const WORK: &str = "/run/pinstorm-lab-init";

/// kmod's modprobe, by its path: in busybox's shell a bare `modprobe` would be busybox's
/// (which does not read compressed modules the way kmod does).
const MODPROBE: &str = "/sbin/modprobe";

/// Modules to load in the background while virtme-ng's init runs, one process per group,
/// side by side: `modprobe -d base` (the directory holding `lib/modules/RELEASE`), or with
/// busybox, its `insmod` of each file in dependency order, when the host could name them all
/// (see [`EarlyGroup::files`]). The names come from the lab's own lists (pmem, soft-RoCE, the
/// disk filesystems), never from a file.
pub struct EarlyModules<'a> {
    pub base: &'a str,
    pub groups: &'a [EarlyGroup],
}

/// One group of [`EarlyModules`]: its tag (the loader's name, see [`loader_name`]), its
/// modules, and, when the host resolved them from the kernel's `modules.dep`, the files to
/// `insmod` in that order (dependencies first; uncompressed `.ko`, paths under `base`).
/// Measured in a 7.2 TCG guest: each kmod `modprobe` process took 0.5-1.1 s before it loaded
/// anything (it and libcrypto come over 9p, then the module indexes), busybox's static insmod
/// 0.1-0.3 s per small module in all.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyGroup {
    pub tag: &'static str,
    pub modules: Vec<&'static str>,
    pub files: Option<Vec<String>>,
}

/// The shell line that starts group `tag`'s loader in the background: `shell -c BODY NAME
/// ARGS`, with [`loader_name`] as the shell's `$0` (so on its command line) and `; :` after
/// the body, which keeps the shell alive (no exec of its last command) until the whole group
/// is done. `args` are single-quoted: the callers pass nothing that holds a quote.
pub(crate) fn loader_line(shell: &str, body: &str, tag: &str, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "{shell} -c '{body}; :' {} {} >/dev/null 2>&1 &\n",
        loader_name(tag),
        args.join(" ")
    )
}

/// The loop a loader runs over its files with `insmod` (busybox's, at `busybox`).
pub(crate) fn insmod_body(busybox: &str) -> String {
    format!("for f in \"$@\"; do {busybox} insmod \"$f\"; done")
}

/// The name a group's loader runs under (its shell's `$0`, so its command line): the agent
/// waits while a process with it is alive, then asks kmod only for what is still missing.
pub fn loader_name(tag: &str) -> String {
    format!("pinstorm-lab-modules-{tag}")
}

/// Busybox's static binary (Debian's busybox-static, which scripts/lab-setup.sh installs):
/// when the host has it, the script runs in its shell and its own mount, mkdir and mknod,
/// instead of a dynamically linked program per step whose libraries each come over 9p
/// (1.3-1.8 s of a TCG guest's boot for the seven of them).
pub const BUSYBOX: &str = "/bin/busybox";

/// The init script that hides [`HIDDEN`], starts loading `early` in the background, and
/// execs `next` (virtme-ng's init); with `busybox`, its shell and tools do the work. None
/// when `next` cannot be quoted for the shell as it is.
pub fn script(next: &str, early: Option<&EarlyModules>, busybox: bool) -> Option<String> {
    let bb = if busybox {
        format!("{BUSYBOX} ")
    } else {
        String::new()
    };
    if next.is_empty() || next.contains(['\'', '\n']) {
        return None;
    }
    let quotable = |s: &str| !s.is_empty() && !s.contains(['\'', '\n']);
    // Under TCG loading a module (its signature, relocations, the driver's probe) is CPU
    // work, and virtme-ng's init mostly waits for 9p: loading them side by side took the
    // guest's module step (2.5-3 s on 6.1) out of the critical path.
    let is_module = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let is_file = |f: &str| {
        f.ends_with(".ko")
            && f.starts_with('/')
            && !f.split('/').any(|c| c == "..")
            && f.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./+".contains(c))
    };
    let shell = if busybox {
        format!("{BUSYBOX} sh")
    } else {
        "/bin/sh".to_string()
    };
    let early = early
        .filter(|e| quotable(e.base))
        .map(|e| {
            e.groups
                .iter()
                .filter(|g| !g.modules.is_empty() && g.modules.iter().all(|n| is_module(n)))
                .filter(|g| is_module(g.tag))
                .map(|g| {
                    // A file passes `is_file` and the base `quotable`: neither holds a quote.
                    match &g.files {
                        Some(f) if busybox && !f.is_empty() && f.iter().all(|f| is_file(f)) => {
                            loader_line(&shell, &insmod_body(BUSYBOX), g.tag, f)
                        }
                        _ => loader_line(
                            &shell,
                            &format!("{MODPROBE} -d \"$1\" -a {}", g.modules.join(" ")),
                            g.tag,
                            &[e.base.to_string()],
                        ),
                    }
                })
                .collect::<String>()
        })
        .unwrap_or_default();
    let mut hide = vec![format!(
        "{bb}mount -t tmpfs -o mode=0755 pinstorm-lab-init /run"
    )];
    for (i, (over, path)) in HIDDEN.iter().enumerate() {
        let upper = format!("{WORK}/{i}/upper");
        let work = format!("{WORK}/{i}/work");
        let whiteout = format!("{upper}/{path}");
        let dir = whiteout
            .rsplit_once('/')
            .map_or(upper.clone(), |(d, _)| d.to_string());
        hide.push(format!("{bb}mkdir -p {dir} {work}"));
        // A character device 0:0 in the upper directory is overlayfs's whiteout: the lower
        // file does not exist in the merged view.
        hide.push(format!("{bb}mknod {whiteout} c 0 0"));
        hide.push(format!(
            "{bb}mount -t overlay -o lowerdir={over},upperdir={upper},workdir={work} pinstorm-lab-init {over}"
        ));
    }
    let hidden: Vec<String> = HIDDEN.iter().map(|(m, p)| format!("{m}/{p}")).collect();
    Some(format!(
        "#!{shell}\n\
         # pinstorm lab: hide udev and systemd-tmpfiles from virtme-ng's init, then become it.\n\
         PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         if {}; then\n\
         \x20   echo \"pinstorm lab init: hid {} from virtme-ng's init (no systemd-tmpfiles, no udev)\" >&2\n\
         else\n\
         \x20   echo 'pinstorm lab init: could not hide udev; virtme-ng'\"'\"'s init runs as it is' >&2\n\
         fi\n\
         {early}\
         exec '{next}'\n",
        hide.join(" &&\n    "),
        hidden.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_script_hides_udev_and_tmpfiles_and_always_execs_the_real_init() {
        let s = script("/venv/virtme/guest/bin/virtme-ng-init", None, false).unwrap();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(
            s.contains("mknod /run/pinstorm-lab-init/0/upper/systemd c 0 0"),
            "{s}"
        );
        assert!(
            s.contains("mknod /run/pinstorm-lab-init/1/upper/lib/systemd/systemd-udevd c 0 0"),
            "{s}"
        );
        assert!(
            s.contains("lowerdir=/etc,") && s.contains("lowerdir=/usr,"),
            "{s}"
        );
        // The exec is outside the if: a failed mount still boots the real init.
        assert!(
            s.trim_end()
                .ends_with("fi\nexec '/venv/virtme/guest/bin/virtme-ng-init'"),
            "{s}"
        );
        assert!(!s.contains("modprobe"), "{s}");
        assert!(script("/x'y", None, false).is_none());
        assert!(script("", None, false).is_none());
    }

    fn group(tag: &'static str, modules: &[&'static str], files: Option<&[&str]>) -> EarlyGroup {
        EarlyGroup {
            tag,
            modules: modules.to_vec(),
            files: files.map(|f| f.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn modules_load_in_the_background_before_the_real_init() {
        let groups = vec![
            group("devices", &["nfit", "nd_pmem"], None),
            group("fs", &["xfs", "loop"], None),
        ];
        let early = EarlyModules {
            base: "/cache/kernels/k",
            groups: &groups,
        };
        let s = script("/init", Some(&early), false).unwrap();
        let bg: Vec<&str> = s
            .lines()
            .filter(|l| l.contains("modprobe"))
            .map(str::trim)
            .collect();
        assert_eq!(
            bg,
            [
                "/bin/sh -c '/sbin/modprobe -d \"$1\" -a nfit nd_pmem; :' pinstorm-lab-modules-devices '/cache/kernels/k' >/dev/null 2>&1 &",
                "/bin/sh -c '/sbin/modprobe -d \"$1\" -a xfs loop; :' pinstorm-lab-modules-fs '/cache/kernels/k' >/dev/null 2>&1 &"
            ],
            "{s}"
        );
        assert!(s.find("modprobe").unwrap() < s.find("exec '/init'").unwrap());
        // Nothing that cannot be quoted, or a name that is not a module's.
        let (ok, bad_name, bad_tag, none) = (
            vec![group("devices", &["nfit"], None)],
            vec![group("devices", &["nfit;reboot"], None)],
            vec![group("a b", &["nfit"], None)],
            vec![group("devices", &[], None)],
        );
        for (base, groups) in [
            ("/a'b", &ok),
            ("/a", &bad_name),
            ("/a", &bad_tag),
            ("/a", &none),
        ] {
            let bad = EarlyModules { base, groups };
            assert!(!script("/init", Some(&bad), false)
                .unwrap()
                .contains("modprobe"));
        }
    }

    #[test]
    fn with_busybox_the_script_runs_in_its_shell_and_tools_and_insmods_the_hosts_files() {
        let groups = vec![
            group("fs", &["xfs"], None),
            group(
                "devices",
                &["nd_pmem"],
                Some(&[
                    "/k/lib/modules/r/libnvdimm.ko",
                    "/k/lib/modules/r/nd_pmem.ko",
                ]),
            ),
        ];
        let early = EarlyModules {
            base: "/k",
            groups: &groups,
        };
        let s = script("/init", Some(&early), true).unwrap();
        assert!(s.starts_with("#!/bin/busybox sh\n"), "{s}");
        for l in s
            .lines()
            .filter(|l| l.contains("mount ") || l.contains("mkdir ") || l.contains("mknod "))
        {
            assert!(
                l.contains("/bin/busybox mount")
                    || l.contains("/bin/busybox mkdir")
                    || l.contains("/bin/busybox mknod"),
                "{l}"
            );
        }
        // No files: kmod, by name.
        assert!(
            s.contains("/bin/busybox sh -c '/sbin/modprobe -d \"$1\" -a xfs; :' pinstorm-lab-modules-fs '/k' "),
            "{s}"
        );
        // Files: busybox's insmod of each, in the host's order.
        assert!(
            s.contains("/bin/busybox sh -c 'for f in \"$@\"; do /bin/busybox insmod \"$f\"; done; :' pinstorm-lab-modules-devices '/k/lib/modules/r/libnvdimm.ko' '/k/lib/modules/r/nd_pmem.ko' >/dev/null 2>&1 &"),
            "{s}"
        );
        // A file that is compressed, relative, climbs out or could break the quoting: kmod.
        for f in [
            "/k/x.ko.xz",
            "k/x.ko",
            "/k/../x.ko",
            "/k/x'y.ko",
            "/k/x y.ko",
        ] {
            let g = vec![group("devices", &["x"], Some(&[f]))];
            let s = script(
                "/init",
                Some(&EarlyModules {
                    base: "/k",
                    groups: &g,
                }),
                true,
            )
            .unwrap();
            assert!(!s.contains("insmod") && s.contains("modprobe"), "{f}: {s}");
        }
    }
}
