//! The holder's pin: a shared read-write mapping of the leased file, pinned through the pin
//! path the runner named.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use super::Reporter;
use crate::canary::Canary;
use crate::lease::protocol::HolderConfig;
use crate::pin::{PinError, PinTarget, Pinner};
use crate::sys::{MapMode, Mapping};

/// A shared, writable, populated mapping: what an RDMA user pins.
pub(super) fn map_shared(file: &File, len: usize) -> Result<Mapping, crate::sys::Errno> {
    Mapping::file(
        file.as_fd(),
        len,
        MapMode {
            shared: true,
            writable: true,
            hugetlb: false,
            populate: true,
        },
    )
}

pub(super) fn target(mapping: &Mapping) -> PinTarget {
    PinTarget::of(mapping, mapping.len())
}

/// How a failed pin is reported: the kernel's errno (or the device's status) by name, else
/// the whole error.
pub(super) fn pin_error(e: PinError) -> String {
    e.outcome().unwrap_or_else(|| e.to_string())
}

/// A fresh pinner of the configured path and settings, registered on `target`.
pub(super) fn pin(cfg: &HolderConfig, target: PinTarget) -> Result<Box<dyn Pinner>, String> {
    let mut pinner = cfg
        .pin
        .path(&cfg.pins)
        .pinner()
        .map_err(|e| e.to_string())?;
    pinner.register(target).map_err(pin_error)?;
    Ok(pinner)
}

/// A pin on a shared read-write mapping of the file.
pub(super) struct HeldPin {
    mapping: Option<Mapping>,
    /// The pinned range (registered until [`HeldPin::unpin`], also after
    /// [`HeldPin::munmap`]).
    target: PinTarget,
    pinner: Box<dyn Pinner>,
}

impl HeldPin {
    pub(super) fn new(cfg: &HolderConfig, file: &File, len: usize) -> Result<HeldPin, String> {
        let mapping = map_shared(file, len).map_err(|e| format!("mmap: {}", e.name()))?;
        let target = target(&mapping);
        let pinner = pin(cfg, target)?;
        Ok(HeldPin {
            mapping: Some(mapping),
            target,
            pinner,
        })
    }

    /// Pin the file, or report the refusal (`None`).
    pub(super) fn new_or_refuse(
        out: &Reporter,
        cfg: &HolderConfig,
        file: &File,
        len: usize,
    ) -> Option<HeldPin> {
        HeldPin::new(cfg, file, len)
            .map_err(|errno| out.refused("pin", errno))
            .ok()
    }

    pub(super) fn target(&self) -> PinTarget {
        self.target
    }

    /// The descriptor the pin lives in, for handing it to another process.
    pub(super) fn pin_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pinner.pin_fd()
    }

    /// The device writes a canary page at offset 0; read the file back through `via`, a
    /// descriptor this process already has: opening the file again would break the
    /// holder's own lease.
    pub(super) fn device_write(&mut self, via: &File, run_tag: u32, event: u64) -> String {
        let data = Canary {
            run_tag,
            file_id: 0,
            offset: 0,
            event,
        }
        .page(4096);
        match self.pinner.device_write(0, &data) {
            Ok(_) => {}
            Err(PinError::Kernel { errno, .. }) => return errno.name(),
            Err(e) => return format!("error: {e}"),
        }
        let mut back = vec![0u8; 4096];
        match via.read_exact_at(&mut back, 0) {
            Ok(()) if back == data => "kept".into(),
            Ok(()) => "lost".into(),
            // A file truncated to 0 has nothing at offset 0: the write is not in it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "lost".into(),
            Err(e) => format!("error: {e}"),
        }
    }

    pub(super) fn unpin(&mut self) {
        let _ = self.pinner.unregister();
    }

    pub(super) fn munmap(&mut self) {
        self.mapping = None;
    }

    /// Leave the pin to another process that holds [`HeldPin::pin_fd`] (a forked child):
    /// close this process's pinning context without unregistering. The mapping stays for as
    /// long as this process lives, as it would in a program that forked.
    pub(super) fn hand_over(self) {
        let HeldPin {
            mapping, pinner, ..
        } = self;
        pinner.let_go();
        std::mem::forget(mapping);
    }
}
