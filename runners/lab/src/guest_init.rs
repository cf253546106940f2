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

/// The markers of the modules loaded in the background from the script: made before the
/// loading starts and after it ended. The guest agent waits for the second when it finds the
/// first (`/run` is the script's tmpfs, which virtme-ng-init keeps).
pub const EARLY_LOADING: &str = "/run/pinstorm-lab-init/modules.loading";
pub const EARLY_DONE: &str = "/run/pinstorm-lab-init/modules.done";

/// Modules to load in the background while virtme-ng's init runs: `modprobe -d base` (the
/// directory holding `lib/modules/RELEASE`) of `names`, which come from the lab's own lists
/// (pmem, soft-RoCE, the disk filesystems), never from a file.
pub struct EarlyModules<'a> {
    pub base: &'a str,
    pub names: &'a [&'a str],
}

/// The init script that hides [`HIDDEN`], starts loading `early` in the background, and
/// execs `next` (virtme-ng's init). None when `next` cannot be quoted for the shell as it is.
pub fn script(next: &str, early: Option<&EarlyModules>) -> Option<String> {
    if next.is_empty() || next.contains(['\'', '\n']) {
        return None;
    }
    let quotable = |s: &str| !s.is_empty() && !s.contains(['\'', '\n']);
    // Under TCG loading a module (its signature, relocations, the driver's probe) is CPU
    // work, and virtme-ng's init mostly waits for 9p: loading them side by side took the
    // guest's module step (2.5-3 s on 6.1) out of the critical path.
    let early = early
        .filter(|e| {
            quotable(e.base)
                && !e.names.is_empty()
                && e.names.iter().all(|n| {
                    n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
        })
        .map(|e| {
            format!(
                "if mkdir -p {WORK} && : > {EARLY_LOADING}; then\n\
                 \x20   (modprobe -d '{}' -a {} >/dev/null 2>&1; : > {EARLY_DONE}) &\n\
                 fi\n",
                e.base,
                e.names.join(" ")
            )
        })
        .unwrap_or_default();
    let mut hide = vec![format!(
        "mount -t tmpfs -o mode=0755 pinstorm-lab-init /run"
    )];
    for (i, (over, path)) in HIDDEN.iter().enumerate() {
        let upper = format!("{WORK}/{i}/upper");
        let work = format!("{WORK}/{i}/work");
        let whiteout = format!("{upper}/{path}");
        let dir = whiteout
            .rsplit_once('/')
            .map_or(upper.clone(), |(d, _)| d.to_string());
        hide.push(format!("mkdir -p {dir} {work}"));
        // A character device 0:0 in the upper directory is overlayfs's whiteout: the lower
        // file does not exist in the merged view.
        hide.push(format!("mknod {whiteout} c 0 0"));
        hide.push(format!(
            "mount -t overlay -o lowerdir={over},upperdir={upper},workdir={work} pinstorm-lab-init {over}"
        ));
    }
    let hidden: Vec<String> = HIDDEN.iter().map(|(m, p)| format!("{m}/{p}")).collect();
    Some(format!(
        "#!/bin/sh\n\
         # pinstorm lab: hide udev and systemd-tmpfiles from virtme-ng's init, then become it.\n\
         PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         read up0 _ < /proc/uptime\n\
         if {}; then\n\
         \x20   read up1 _ < /proc/uptime\n\
         \x20   echo \"pinstorm lab init: hid {} from virtme-ng's init (no systemd-tmpfiles, no udev), uptime $up0 s to $up1 s\" >&2\n\
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
        let s = script("/venv/virtme/guest/bin/virtme-ng-init", None).unwrap();
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
        assert!(script("/x'y", None).is_none());
        assert!(script("", None).is_none());
    }

    #[test]
    fn modules_load_in_the_background_before_the_real_init_and_say_when_they_are_done() {
        let early = EarlyModules {
            base: "/cache/kernels/k",
            names: &["nfit", "nd_pmem", "xfs"],
        };
        let s = script("/init", Some(&early)).unwrap();
        let bg = s
            .lines()
            .find(|l| l.contains("modprobe"))
            .unwrap_or_else(|| panic!("{s}"));
        assert_eq!(
            bg.trim(),
            "(modprobe -d '/cache/kernels/k' -a nfit nd_pmem xfs >/dev/null 2>&1; : > /run/pinstorm-lab-init/modules.done) &"
        );
        assert!(s.find("modprobe").unwrap() < s.find("exec '/init'").unwrap());
        assert!(
            s.contains(": > /run/pinstorm-lab-init/modules.loading"),
            "{s}"
        );
        // Nothing that cannot be quoted, or a name that is not a module's.
        for bad in [
            EarlyModules {
                base: "/a'b",
                names: &["nfit"],
            },
            EarlyModules {
                base: "/a",
                names: &["nfit;reboot"],
            },
            EarlyModules {
                base: "/a",
                names: &[],
            },
        ] {
            assert!(!script("/init", Some(&bad)).unwrap().contains("modprobe"));
        }
    }
}
