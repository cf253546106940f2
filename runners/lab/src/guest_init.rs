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

/// The init script that hides [`HIDDEN`] and execs `next` (virtme-ng's init). None when
/// `next` cannot be quoted for the shell as it is.
pub fn script(next: &str) -> Option<String> {
    if next.is_empty() || next.contains(['\'', '\n']) {
        return None;
    }
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
        let s = script("/venv/virtme/guest/bin/virtme-ng-init").unwrap();
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
        assert!(script("/x'y").is_none());
        assert!(script("").is_none());
    }
}
