//! Backing `anon` / `anon-hugetlb`: anonymous memory, optionally from the hugetlb pool.
//! A shared anonymous mapping is shmem inside the kernel; a private one is plain anon.

use super::{map_mode, Backing, BackingInfo, BackingKind, Region, RegionError, RegionSpec};
use crate::sys::Mapping;
use crate::units::Size;

pub struct Anon {
    hugetlb: bool,
    info: BackingInfo,
}

impl Anon {
    pub fn new(hugetlb: bool) -> Anon {
        let page_size = if hugetlb {
            crate::sysctl::hugepage_counts().2
        } else {
            crate::sys::page_size() as u64
        };
        Anon {
            hugetlb,
            info: BackingInfo {
                backing: if hugetlb {
                    BackingKind::AnonHugetlb
                } else {
                    BackingKind::Anon
                },
                fs: if hugetlb { "anon-hugetlb" } else { "anon" }.into(),
                mount_point: None,
                mount_source: None,
                mount_options: None,
                page_size,
            },
        }
    }
}

impl Backing for Anon {
    fn kind(&self) -> BackingKind {
        self.info.backing
    }

    fn info(&self) -> &BackingInfo {
        &self.info
    }

    fn region(&self, spec: &RegionSpec) -> Result<Region, RegionError> {
        let len = spec.size.round_up(self.info.page_size).as_usize();
        let mapping = Mapping::anonymous(len, map_mode(spec, self.hugetlb))
            .map_err(|errno| RegionError::Kernel { op: "mmap", errno })?;
        mapping.touch(self.info.page_size as usize);
        Ok(Region {
            mapping,
            spec: RegionSpec {
                size: Size(len as u64),
                ..*spec
            },
            file: None,
            dax: Some(false),
        })
    }
}
