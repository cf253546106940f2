//! `--scratch-dev`: a block device the user names as scratch, on a loop device standing in
//! for an NVDIMM namespace (the lab's guests have the real one). Witnesses independent of
//! pinstorm: `blkid -p` (what is on the device) and `/proc/mounts`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A loop device with partition scanning over a sparse image; detached on drop, even when
/// the test fails.
struct LoopDev {
    dev: PathBuf,
    image: PathBuf,
}

impl LoopDev {
    fn new(sb: &Sandbox, tag: &str, size: &str) -> Option<LoopDev> {
        let image = sb.base.join(format!("scratch-dev-{tag}.img"));
        let ok = Command::new("truncate")
            .args(["-s", size])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        dev.starts_with("/dev/loop").then(|| LoopDev {
            dev: PathBuf::from(dev),
            image,
        })
    }

    fn path(&self) -> &str {
        self.dev.to_str().unwrap()
    }

    /// What `blkid -p` finds on it: `None` when it is blank (exit 2).
    fn signatures(&self) -> Option<String> {
        let o = Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&self.dev)
            .output()
            .unwrap();
        match o.status.code() {
            Some(2) => None,
            Some(0) => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
            c => panic!("blkid -p {}: {c:?}", self.dev.display()),
        }
    }

    fn mounted(&self) -> Vec<String> {
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{} ", self.path()))
                    || l.starts_with(&format!("{}p", self.path()))
            })
            .map(str::to_string)
            .collect()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for m in self.mounted() {
            if let Some(mp) = m.split(' ').nth(1) {
                let _ = Command::new("umount").arg(mp).status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

const PROBE: &str = r#"name = "scratch-dev-probe"
description = "the DAX backings on a named scratch device"
[probe]
pins = ["io_uring"]
backings = ["xfs-dax", "ext4-dax"]
maps = ["shared"]
access = ["rw"]
size = "2M"
"#;

fn tools_missing() -> Option<String> {
    if !is_root() {
        return Some("needs root (losetup, mkfs, mount)".into());
    }
    for t in ["losetup", "blkid", "wipefs", "mkfs.xfs", "mkfs.ext4"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists());
        if !found {
            return Some(format!("{t} not found (scripts/test.sh installs it)"));
        }
    }
    None
}

/// Two blank devices, one per filesystem: pinstorm makes xfs and ext4 on them, mounts them
/// dax=always and checks DAX per file (a loop device has none, so xfs mounts and is refused
/// as not DAX, ext4 refuses dax=always; both backings notrun saying so, never called DAX),
/// and leaves both devices blank: no signature, no mount.
#[test]
fn blank_scratch_devices_get_their_filesystems_and_are_blank_again_afterwards() {
    let test = "blank_scratch_devices_get_their_filesystems_and_are_blank_again_afterwards";
    if let Some(why) = tools_missing() {
        return skip(test, &why);
    }
    let _g = serial();
    let sb = Sandbox::new("scratchdev");
    let (Some(x), Some(e)) = (
        LoopDev::new(&sb, "x", "512M"),
        LoopDev::new(&sb, "e", "256M"),
    ) else {
        return skip(test, "no loop devices could be made");
    };
    let scenario = sb.base.join("probe.toml");
    std::fs::write(&scenario, PROBE).unwrap();
    let o = sb
        .cmd()
        .args(["--scratch-dev", &format!("xfs={}", x.path())])
        .args(["--scratch-dev", &format!("ext4={}", e.path())])
        .arg("run")
        .arg(&scenario)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = read_json(&sb.results()[0]);
    let backings = r["backings"].as_array().unwrap();
    let reason = |name: &str| {
        backings
            .iter()
            .find(|b| b["backing"] == name)
            .unwrap_or_else(|| panic!("{name} in {backings:?}"))["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // xfs was made and mounted (its mount point is named), then refused as not DAX.
    let xfs = reason("xfs-dax");
    assert!(
        xfs.contains("xfs-dev.mnt") && xfs.contains("not DAX"),
        "{xfs}"
    );
    // ext4 refuses dax=always on a device without DAX; the reason says so.
    let ext4 = reason("ext4-dax");
    assert!(
        ext4.contains("dax=always") && ext4.contains("no DAX"),
        "{ext4}"
    );
    // Independent witnesses: nothing left on the devices, and nothing mounted.
    for d in [&x, &e] {
        assert_eq!(d.signatures(), None, "{}", d.path());
        assert_eq!(d.mounted(), Vec::<String>::new());
    }
}

/// Refusals: a device with a filesystem (unless --scratch-dev-force, which wipes it), a
/// mounted one, a relative path and a file are bad input (exit 2) naming the flag, and
/// nothing is written to the device.
#[test]
fn a_scratch_device_in_use_or_not_blank_is_refused_and_force_wipes_it() {
    let test = "a_scratch_device_in_use_or_not_blank_is_refused_and_force_wipes_it";
    if let Some(why) = tools_missing() {
        return skip(test, &why);
    }
    let _g = serial();
    let sb = Sandbox::new("scratchdev-refuse");
    let Some(dev) = LoopDev::new(&sb, "r", "512M") else {
        return skip(test, "no loop device could be made");
    };
    let scenario = sb.base.join("probe.toml");
    std::fs::write(&scenario, PROBE).unwrap();
    let run = |extra: &[&str]| {
        sb.cmd()
            .args(["--scratch-dev", dev.path()])
            .args(extra)
            .arg("run")
            .arg(&scenario)
            .output()
            .unwrap()
    };
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&dev.dev)
        .status()
        .unwrap()
        .success());
    let before = dev.signatures().expect("the ext4 just made");
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--scratch-dev") && stderr(&o).contains("ext4"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        dev.signatures().as_deref(),
        Some(before.as_str()),
        "untouched"
    );

    // Mounted: in use, even with force.
    let mnt = sb.base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    assert!(Command::new("mount")
        .arg(&dev.dev)
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let o = run(&["--scratch-dev-force"]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    assert_eq!(
        dev.signatures().as_deref(),
        Some(before.as_str()),
        "untouched"
    );

    // Forced: wiped, used, and blank afterwards.
    let o = run(&["--scratch-dev-force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(dev.signatures(), None);

    for (bad, want) in [
        ("dev/loop0", "absolute"),
        ("btrfs=/dev/loop0", "xfs or ext4"),
        (scenario.to_str().unwrap(), "not a block device"),
    ] {
        let o = sb
            .cmd()
            .args(["--scratch-dev", bad, "run"])
            .arg(&scenario)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{bad}: {}", stderr(&o));
    }
}
