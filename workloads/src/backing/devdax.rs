//! `devdax`: a device-dax character device (`/dev/daxX.Y`) the user named as scratch.
//!
//! Device-dax has no filesystem, so no truncate, punch or reflink can move its blocks: the
//! kernel lets long-term pins of it through on every kernel (it is the contrast case to
//! FS-DAX). Regions are `MAP_SHARED` windows of the device at offsets aligned to the
//! device's alignment (2 MiB unless sysfs says otherwise). Writing a region overwrites the
//! device, which is why pinstorm only opens a device the user named with `--devdax`, and
//! checks that sysfs calls it a dax device first.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    map_mode, Access, Backing, BackingInfo, BackingKind, NotRun, Region, RegionError, RegionSpec,
};
use crate::sys::Mapping;
use crate::units::Size;

pub struct DevDax {
    info: BackingInfo,
    path: PathBuf,
    size: u64,
    next: AtomicU64,
}

fn sysfs_u64(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    s.strip_prefix("0x")
        .map(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| s.parse().ok())
}

impl DevDax {
    pub fn open(path: &Path) -> Result<DevDax, NotRun> {
        if !path.is_absolute() {
            return Err(NotRun(format!(
                "--devdax must be an absolute path, got {:?}",
                path
            )));
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| NotRun(format!("--devdax {}: {e}", path.display())))?;
        if !meta.file_type().is_char_device() {
            return Err(NotRun(format!(
                "--devdax {} is not a character device",
                path.display()
            )));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sys = Path::new("/sys/bus/dax/devices").join(&name);
        let sys = if sys.exists() {
            sys
        } else {
            Path::new("/sys/class/dax").join(&name)
        };
        let Some(size) = sysfs_u64(&sys.join("size")) else {
            return Err(NotRun(format!(
                "--devdax {}: sysfs has no dax device {name} (looked in /sys/bus/dax/devices and /sys/class/dax); refusing to write to it",
                path.display()
            )));
        };
        let align = sysfs_u64(&sys.join("align")).unwrap_or(2 << 20);
        if size < align {
            return Err(NotRun(format!(
                "--devdax {}: {size} bytes is smaller than its alignment {align}",
                path.display()
            )));
        }
        Ok(DevDax {
            info: BackingInfo {
                backing: BackingKind::Devdax,
                fs: "devdax".into(),
                mount_point: None,
                mount_source: Some(path.display().to_string()),
                mount_options: Some(format!("size={size},align={align}")),
                page_size: align,
            },
            path: path.to_path_buf(),
            size,
            next: AtomicU64::new(0),
        })
    }
}

impl Backing for DevDax {
    fn kind(&self) -> BackingKind {
        BackingKind::Devdax
    }

    fn info(&self) -> &BackingInfo {
        &self.info
    }

    fn region(&self, spec: &RegionSpec) -> Result<Region, RegionError> {
        let len = spec.size.round_up(self.info.page_size).0;
        let slots = self.size / len;
        if slots == 0 {
            return Err(RegionError::Tool(anyhow::anyhow!(
                "a {len}-byte region does not fit the {}-byte device {}",
                self.size,
                self.path.display()
            )));
        }
        // Regions take turns through the device; more live regions than slots would share
        // pages, which only probe/bench-sized use never reaches.
        let offset = (self.next.fetch_add(1, Ordering::Relaxed) % slots) * len;
        let file: File = OpenOptions::new()
            .read(true)
            .write(spec.access == Access::Rw)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| RegionError::Tool(anyhow::anyhow!("open {}: {e}", self.path.display())))?;
        let mode = map_mode(spec, false);
        let mapping = Mapping::file_at(file.as_fd(), len as usize, offset, mode)
            .map_err(|errno| RegionError::Kernel { op: "mmap", errno })?;
        mapping.touch(self.info.page_size as usize);
        Ok(Region {
            mapping,
            spec: RegionSpec {
                size: Size(len),
                ..*spec
            },
            file: None,
            // sysfs says it is a dax device (checked in `open`).
            dax: Some(true),
        })
    }
}
