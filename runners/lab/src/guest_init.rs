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
//! Where it can (busybox, and nothing on virtme-ng's command line it does not know), the
//! script is the agent's init itself and virtme-ng's init does not run at all: see
//! [`OwnInit`]. Should its set-up fail, the script goes on as above.
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

/// What the lab's init needs to run the agent itself, in place of virtme-ng's init (from
/// [`crate::vm::own_init`]): the command virtme-ng would run, the host directories it would
/// mount (9p tag, guest path), the modules directory it would link at
/// `/lib/modules/RELEASE`, and the host name.
///
/// Why: virtme-ng-init's work before the command is 8 overlays over the 9p root, the
/// script's I/O ports, the network and its own start (a Rust binary and its libraries over
/// 9p), 1.5-3 s of a TCG guest's boot while the module loaders hold both CPUs. The agent
/// needs /proc, /sys, /dev, a writable /tmp, the staging directory and the modules
/// directory; the lab's init does that much with busybox and runs the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnInit {
    pub exec: String,
    pub mounts: Vec<(String, String)>,
    pub link_mods: Option<String>,
    pub hostname: Option<String>,
}

/// Where the lab's own init keeps its overlays' upper and work directories.
const OWN: &str = "/run/pinstorm-lab-init/own";

/// The script's part that is the lab's own init (busybox only): the mounts, the agent with
/// the console as its stdout and stderr (as virtme-ng's init ran it here: it finds its
/// script I/O ports by udev's links, which the lab's guests do not have; and the serial
/// console and vng's stderr port each open the host's console file at offset 0, so writing
/// to both overwrites the console's start), its exit status into the `virtme.ret` port
/// found in sysfs (vng exits with it), power off. When a mount the agent needs fails, it
/// says so and the script goes on to virtme-ng's init. None when a value cannot be quoted.
fn own_init(own: &OwnInit) -> Option<String> {
    let q = |s: &str| -> Option<String> {
        (!s.is_empty() && !s.contains(['\n', '\0']))
            .then(|| shlex::try_quote(s).ok().map(|c| c.into_owned()))
            .flatten()
    };
    let b = BUSYBOX;
    let mut needed = vec![
        format!("{b} mount -t proc proc /proc"),
        format!("{b} mount -t sysfs sysfs /sys"),
        format!("{b} mount -t devtmpfs devtmpfs /dev"),
        format!("{b} mount -t tmpfs -o mode=0755 pinstorm-lab-init /run"),
    ];
    // Writable overlays over the host's /tmp, as virtme-ng's (the agent's binary may be
    // there: a cargo target directory under /tmp), and /lib when the modules directory is
    // linked there (the host may have no /lib/modules to mount over).
    let overlays: &[&str] = if own.link_mods.is_some() {
        &["tmp", "lib"]
    } else {
        &["tmp"]
    };
    for d in overlays {
        needed.push(format!("{b} mkdir -p {OWN}/{d}/upper {OWN}/{d}/work"));
        needed.push(format!(
            "{b} mount -t overlay -o lowerdir=/{d},upperdir={OWN}/{d}/upper,workdir={OWN}/{d}/work pinstorm-lab-init /{d}"
        ));
    }
    for (tag, path) in &own.mounts {
        if !tag.starts_with("virtme.initmount") || !path.starts_with('/') {
            return None;
        }
        needed.push(format!(
            "{b} mount -t 9p -o version=9p2000.L,trans=virtio,access=any,msize=524288 {} {}",
            q(tag)?,
            q(path)?
        ));
    }
    let mut optional = vec![
        format!("{b} mkdir -p /dev/pts /dev/shm"),
        format!("{b} mount -t devpts -o nosuid,noexec devpts /dev/pts"),
        format!("{b} mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm"),
        format!("{b} mount -t tmpfs -o nosuid,nodev tmpfs /var/tmp"),
        format!("{b} mount -t cgroup2 cgroup2 /sys/fs/cgroup"),
        format!("{b} mount -t debugfs debugfs /sys/kernel/debug"),
        format!("{b} mount -t tracefs tracefs /sys/kernel/tracing"),
        format!("{b} ln -s /proc/self/fd /dev/fd"),
        format!("{b} ln -s /proc/self/fd/0 /dev/stdin"),
        format!("{b} ln -s /proc/self/fd/1 /dev/stdout"),
        format!("{b} ln -s /proc/self/fd/2 /dev/stderr"),
        format!("{b} ip link set lo up"),
    ];
    if let Some(m) = &own.link_mods {
        // A tmpfs over the host's own modules, if it has any, as virtme-ng's.
        optional.push(format!(
            "{b} mkdir -p /lib/modules && {b} mount -t tmpfs -o mode=0755 pinstorm-lab-init /lib/modules"
        ));
        optional.push(format!(
            "{b} ln -s {} \"/lib/modules/$({b} uname -r)\"",
            q(m)?
        ));
    }
    if let Some(h) = &own.hostname {
        optional.push(format!("{b} hostname {}", q(h)?));
    }
    let optional: String = optional
        .iter()
        .map(|c| {
            format!(
                "    {c} || say {}\n",
                q(&format!("failed: {c}")).unwrap_or_default()
            )
        })
        .collect();
    Some(format!(
        "# The lab's own init, in place of virtme-ng's (guest_init::OwnInit).\n\
         if {}; then\n\
         {optional}\
         \x20   say 'the lab'\"'\"'s own init runs the agent (not virtme-ng'\"'\"'s init)'\n\
         \x20   cd /\n\
         \x20   {b} env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux \\\n\
         \x20       /bin/sh -c {} </dev/null\n\
         \x20   rc=$?\n\
         \x20   for p in /sys/class/virtio-ports/*; do\n\
         \x20       if [ \"$({b} cat \"$p/name\" 2>/dev/null)\" = virtme.ret ]; then\n\
         \x20           printf %s \"$rc\" > \"/dev/${{p##*/}}\"\n\
         \x20       fi\n\
         \x20   done\n\
         \x20   {b} sync\n\
         \x20   {b} poweroff -f\n\
         fi\n\
         say 'the lab'\"'\"'s own init could not set up; virtme-ng'\"'\"'s init runs'\n",
        needed.join(" &&\n    "),
        q(&own.exec)?
    ))
}

/// The init script that hides [`HIDDEN`], starts loading `early` in the background, and
/// execs `next` (virtme-ng's init); with `busybox`, its shell and tools do the work. None
/// when `next` cannot be quoted for the shell as it is.
pub fn script(
    next: &str,
    early: Option<&EarlyModules>,
    busybox: bool,
    own: Option<&OwnInit>,
) -> Option<String> {
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
    // Busybox's tools only: the part runs before anything is mounted.
    let own = own
        .filter(|_| busybox)
        .and_then(own_init)
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
         # pinstorm lab (runners/lab/src/guest_init.rs): start the module loaders, run the\n\
         # agent as the lab's own init, or else hide udev and systemd-tmpfiles from\n\
         # virtme-ng's init and become it.\n\
         PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         say() {{ up=; read -r up _ 2>/dev/null </proc/uptime; echo \"pinstorm lab init: ${{up:+[$up] }}$*\" >&2; }}\n\
         {early}\
         {own}\
         if {}; then\n\
         \x20   say \"hid {} from virtme-ng's init (no systemd-tmpfiles, no udev)\"\n\
         else\n\
         \x20   say 'could not hide udev; virtme-ng'\"'\"'s init runs as it is'\n\
         fi\n\
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
        let s = script("/venv/virtme/guest/bin/virtme-ng-init", None, false, None).unwrap();
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
        assert!(script("/x'y", None, false, None).is_none());
        assert!(script("", None, false, None).is_none());
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
        let s = script("/init", Some(&early), false, None).unwrap();
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
            assert!(!script("/init", Some(&bad), false, None)
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
        let s = script("/init", Some(&early), true, None).unwrap();
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
                None,
            )
            .unwrap();
            assert!(!s.contains("insmod") && s.contains("modprobe"), "{f}: {s}");
        }
    }

    fn own() -> OwnInit {
        OwnInit {
            exec: "/t/pinstorm __lab-guest /s/plan.json".into(),
            mounts: vec![("virtme.initmount0".into(), "/s".into())],
            link_mods: Some("/k/lib/modules/7.2".into()),
            hostname: Some("pinstorm-lab".into()),
        }
    }

    #[test]
    fn the_labs_own_init_runs_the_agent_on_the_console_and_falls_back_to_virtme_ngs() {
        let s = script("/init", None, true, Some(&own())).unwrap();
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle}: {s}"));
        // What the agent needs, before it runs; virtme-ng's init only when that failed.
        let needed = [
            "/bin/busybox mount -t proc proc /proc",
            "/bin/busybox mount -t devtmpfs devtmpfs /dev",
            "lowerdir=/tmp,",
            "lowerdir=/lib,",
            "/bin/busybox mount -t 9p -o version=9p2000.L,trans=virtio,access=any,msize=524288 virtme.initmount0 /s; then",
        ];
        let mut last = 0;
        for n in needed {
            let i = at(n);
            assert!(i > last, "{n} out of order: {s}");
            last = i;
        }
        // On the console (PID 1's stdout and stderr), nothing to read.
        let run = at("/bin/sh -c '/t/pinstorm __lab-guest /s/plan.json' </dev/null\n");
        assert!(run > last);
        assert!(at("ln -s /k/lib/modules/7.2 \"/lib/modules/$(/bin/busybox uname -r)\"") < run);
        assert!(at("hostname pinstorm-lab") < run);
        // The status goes to vng through virtme.ret; then the guest powers off.
        // Found by its name in sysfs.
        assert!(run < at("= virtme.ret ]"));
        assert!(at("= virtme.ret ]") < at("printf %s \"$rc\" > \"/dev/${p##*/}\""));
        assert!(at("printf %s") < at("/bin/busybox poweroff -f"));
        // After the own init's block: the hide and virtme-ng's init, as without it.
        assert!(at("poweroff -f") < at("could not set up; virtme-ng"));
        assert!(
            at("could not set up; virtme-ng") < at("mknod /run/pinstorm-lab-init/0/upper/systemd")
        );
        assert!(s.trim_end().ends_with("exec '/init'"), "{s}");
        // Loaders the initramfs did not start (it could not be built) start first.
        let groups = vec![group("fs", &["xfs"], Some(&["/k/xfs.ko"]))];
        let early = EarlyModules {
            base: "/k",
            groups: &groups,
        };
        let s = script("/init", Some(&early), true, Some(&own())).unwrap();
        assert!(
            s.find("insmod").unwrap() < s.find("# The lab's own init, in place").unwrap(),
            "{s}"
        );
        // Without busybox, or with a value it cannot quote: virtme-ng's init runs the agent.
        let plain = script("/init", None, false, Some(&own())).unwrap();
        assert!(
            !plain.contains("poweroff") && !plain.contains("virtme.ret"),
            "{plain}"
        );
        let bad = OwnInit {
            exec: "a\nb".into(),
            ..own()
        };
        let s = script("/init", None, true, Some(&bad)).unwrap();
        assert!(!s.contains("poweroff"), "{s}");
        let bad = OwnInit {
            mounts: vec![("virtme.initmount0".into(), "s".into())],
            ..own()
        };
        assert!(!script("/init", None, true, Some(&bad))
            .unwrap()
            .contains("poweroff"));
    }
}
