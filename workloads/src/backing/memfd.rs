//! Backing `memfd` / `memfd-hugetlb`: a `memfd_create()` file (shmem, or hugetlbfs with
//! `MFD_HUGETLB`). It has no path, so nothing of it can outlive the process.

use std::fs::File;

use rustix::fs::{memfd_create, MemfdFlags};

use super::{
    map_file, size_file, Backing, BackingInfo, BackingKind, Region, RegionError, RegionFile,
    RegionSpec,
};
use crate::units::Size;

pub struct Memfd {
    hugetlb: bool,
    info: BackingInfo,
}

impl Memfd {
    pub fn new(hugetlb: bool) -> Memfd {
        let page_size = if hugetlb {
            crate::sysctl::hugepage_counts().2
        } else {
            crate::sys::page_size() as u64
        };
        Memfd {
            hugetlb,
            info: BackingInfo {
                backing: if hugetlb {
                    BackingKind::MemfdHugetlb
                } else {
                    BackingKind::Memfd
                },
                fs: if hugetlb { "hugetlbfs" } else { "tmpfs" }.into(),
                mount_point: None,
                mount_source: None,
                mount_options: None,
                page_size,
            },
        }
    }
}

impl Backing for Memfd {
    fn kind(&self) -> BackingKind {
        self.info.backing
    }

    fn info(&self) -> &BackingInfo {
        &self.info
    }

    fn region(&self, spec: &RegionSpec) -> Result<Region, RegionError> {
        let mut flags = MemfdFlags::CLOEXEC;
        if self.hugetlb {
            flags |= MemfdFlags::HUGETLB;
        }
        let file: File = memfd_create("pinstorm-region", flags)
            .map_err(|e| RegionError::Kernel {
                op: "memfd_create",
                errno: e.into(),
            })?
            .into();
        let len = spec.size.round_up(self.info.page_size).as_usize();
        size_file(&file, len, self.hugetlb)?;
        let mapping = map_file(&file, len, spec, self.hugetlb)?;
        mapping.touch(self.info.page_size as usize);
        let dax = crate::sys::statx_dax(&file).ok().flatten();
        Ok(Region {
            mapping,
            spec: RegionSpec {
                size: Size(len as u64),
                ..*spec
            },
            file: Some(RegionFile::memfd(file)),
            dax,
        })
    }
}
