//! The layout-lease probe: `F_SETLEASE` with the 2019 RFC's `F_LAYOUT` and `F_EXCLUSIVE`
//! flags, and on a kernel that accepts them the RFC's promises checked one by one.

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use pinstorm_analysis::schema::LayoutLeaseProbe;
use pinstorm_workloads::backing::Backing;
use pinstorm_workloads::lease;
use pinstorm_workloads::pin::{PinError, PinSettings, PinTarget};
use pinstorm_workloads::scenario::LeaseJob;
use pinstorm_workloads::sys::{fcntl_int, Errno, MapMode, Mapping};

use super::{lease_file, HOLDER_PIN};

/// Probe `F_SETLEASE` with the RFC's layout-lease flags. Upstream has none: EINVAL.
pub(super) fn run(job: &LeaseJob, b: &dyn Backing, pins: &PinSettings) -> LayoutLeaseProbe {
    let mut p = LayoutLeaseProbe {
        outcome: "notrun".into(),
        reason: None,
        f_layout: job.f_layout,
        f_exclusive: job.f_exclusive,
        answers: BTreeMap::new(),
        checks: BTreeMap::new(),
    };
    let file = match lease_file(b, "layout-lease-probe", 4096) {
        Ok(f) => f,
        Err(e) => {
            p.reason = Some(e);
            return p;
        }
    };
    let fd = match std::fs::File::open(file.path()) {
        Ok(f) => f,
        Err(e) => {
            p.reason = Some(format!("opening the probe file: {e}"));
            return p;
        }
    };
    let tries = [
        ("F_LAYOUT|F_RDLCK", job.f_layout | libc::F_RDLCK),
        (
            "F_LAYOUT|F_RDLCK|F_EXCLUSIVE",
            job.f_layout | libc::F_RDLCK | job.f_exclusive,
        ),
    ];
    let mut accepted = false;
    for (name, arg) in tries {
        let answer = match fcntl_int(&fd, libc::F_SETLEASE, arg) {
            Ok(_) => {
                accepted = true;
                let _ = lease::set_lease(&fd, None, 0);
                "ok".to_string()
            }
            Err(e) => e.name(),
        };
        p.answers.insert(name.into(), answer);
    }
    if accepted {
        p.outcome = "ok".into();
        rfc_checks(job, b, pins, &mut p.checks);
    } else {
        p.reason = Some(format!(
            "this kernel has no layout leases: F_SETLEASE with F_LAYOUT ({}) answered {}",
            job.f_layout,
            p.answers.values().next().cloned().unwrap_or_default()
        ));
    }
    p
}

/// The 2019 RFC's promises, on a kernel that accepts layout leases: a long-term pin without
/// the lease is refused; with an exclusive layout lease held, truncating the pinned range
/// fails with ETXTBSY instead of waiting or losing data; the lease cannot be released while
/// pins exist. Each check records what the kernel answered.
fn rfc_checks(
    job: &LeaseJob,
    b: &dyn Backing,
    pins: &PinSettings,
    checks: &mut BTreeMap<String, String>,
) {
    let size = job.pin_size.bytes();
    let Ok(file) = lease_file(b, "layout-lease-rfc", size) else {
        return;
    };
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file.path())
    else {
        return;
    };
    let mode = MapMode {
        shared: true,
        writable: true,
        hugetlb: false,
        populate: true,
    };
    let Ok(map) = Mapping::file(f.as_fd(), size as usize, mode) else {
        return;
    };
    let target = PinTarget::of(&map, size as usize);
    let answer = |r: Result<(), PinError>| match r {
        Ok(()) => "ok".to_string(),
        Err(PinError::Kernel { errno, .. }) => errno.name(),
        Err(e) => e.to_string(),
    };
    let Ok(mut pinner) = HOLDER_PIN.path(pins).pinner() else {
        return;
    };
    let r = pinner.register(target);
    if r.is_ok() {
        let _ = pinner.unregister();
    }
    checks.insert("pin_without_layout_lease (RFC: refused)".into(), answer(r));
    let layout = job.f_layout | libc::F_RDLCK | job.f_exclusive;
    let took = fcntl_int(&f, libc::F_SETLEASE, layout);
    checks.insert(
        "exclusive_layout_lease".into(),
        took.map(|_| "ok".to_string()).unwrap_or_else(|e| e.name()),
    );
    let r = pinner.register(target);
    let pinned = r.is_ok();
    checks.insert("pin_with_layout_lease (RFC: ok)".into(), answer(r));
    if pinned {
        let t = rustix::fs::ftruncate(&f, 0)
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| Errno::from(e).name());
        checks.insert("truncate_of_pinned_range (RFC: ETXTBSY)".into(), t);
        let u = lease::set_lease(&f, None, 0)
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| e.name());
        checks.insert("release_lease_while_pinned (RFC: refused)".into(), u);
        let _ = pinner.unregister();
    }
    let _ = lease::set_lease(&f, None, 0);
}
