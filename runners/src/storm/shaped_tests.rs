//! Planted device defects, end to end: a real io_uring pin of a real memfd, a device shim
//! that misplaces or overruns one write, and the file read back with `pread`: the oracles
//! name the class and the exact bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use pinstorm_analysis::oracle::OracleKind;
use pinstorm_workloads::backing::{Access, Backing, MapKind, Memfd, RegionSpec};
use pinstorm_workloads::layout::Partners;
use pinstorm_workloads::pin::{PinError, PinKind, PinSettings, PinTarget, Pinner};
use pinstorm_workloads::units::Size;

use super::{write, Pin};
use crate::storm::oracle::lost_write::Mapping;
use crate::storm::oracle::{Events, FileState, Findings};
use crate::storm::state::{PinnerOut, StormState, TrackedFile};
use crate::watchdog::Watchdog;

/// What the planted device gets wrong.
#[derive(Clone, Copy)]
enum Defect {
    /// Loses the in-page offset: writes at the start of the page.
    DropsInPageOffset,
    /// Writes one byte more than it was given.
    OneBytePastTheEnd,
}

struct Shim {
    inner: Box<dyn Pinner>,
    defect: Defect,
}

impl Pinner for Shim {
    fn register(&mut self, t: PinTarget) -> Result<(), PinError> {
        self.inner.register(t)
    }
    fn unregister(&mut self) -> Result<(), PinError> {
        self.inner.unregister()
    }
    fn registered(&self) -> Option<PinTarget> {
        self.inner.registered()
    }
    fn device_write(&mut self, offset: usize, data: &[u8]) -> Result<usize, PinError> {
        match self.defect {
            Defect::DropsInPageOffset => self.inner.device_write(offset - offset % 4096, data),
            Defect::OneBytePastTheEnd => {
                let mut more = data.to_vec();
                more.push(data[data.len() - 1] ^ 0xff);
                self.inner.device_write(offset, &more)
            }
        }
    }
    fn device_read(&mut self, offset: usize, len: usize) -> Result<Vec<u8>, PinError> {
        self.inner.device_read(offset, len)
    }
}

/// One write of 333 bytes at offset 4096+77 through the shim; the findings.
fn planted(defect: Defect) -> Option<Findings> {
    let path = PinKind::IoUring.path(&PinSettings::default());
    let mut pinner = match path.pinner() {
        Ok(p) => Shim { inner: p, defect },
        Err(e) => {
            // io_uring disabled or unavailable: nothing to plant into. CI has io_uring.
            assert!(
                std::env::var_os("CI").is_none(),
                "no io_uring pinner in CI: {e}"
            );
            eprintln!("skipped: no io_uring pinner here: {e}");
            return None;
        }
    };
    let region = Memfd::new(false)
        .region(&RegionSpec {
            size: Size(4 * 4096),
            map: MapKind::Shared,
            access: Access::Rw,
        })
        .expect("a memfd region");
    let file = TrackedFile {
        state: FileState::new(1, 4),
        name: "memfd:0".into(),
        log: Mutex::new(VecDeque::new()),
        region,
        partners: Partners::default(),
    };
    let wd = Watchdog::new(Duration::from_secs(5), &["pinner-0".to_string()]);
    let storm = StormState {
        files: vec![file],
        path,
        events: Events::default(),
        stop: AtomicBool::new(false),
        wd: wd.clone(),
        unsupported: Mutex::new(BTreeMap::new()),
        findings: Mutex::new(Findings::default()),
        run_tag: 7,
        hold: Duration::ZERO,
        examples: 5,
        mapping: Mapping::SharedFile,
        expected: None,
        size: 4 * 4096,
        align: 4096,
        rate: 0.0,
        shapes: vec![],
        write_at: None,
    };
    let f = &storm.files[0];
    pinner.register(f.region.pin_target()).expect("registering");
    let snap = f.state.snapshot();
    let pin = Pin {
        around: (snap, snap),
        event: storm.events.next(),
        at_ms: 0.0,
    };
    let mut out = PinnerOut::default();
    let slot = wd.slot(0);
    write(
        &storm,
        f,
        &mut pinner,
        &slot,
        &mut out,
        "sub-page",
        (4096 + 77, 333),
        &pin,
    );
    pinner.unregister().expect("unregistering");
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.totals.device_writes, 1);
    let findings = std::mem::take(&mut *storm.findings());
    Some(findings)
}

#[test]
fn a_device_that_drops_the_in_page_offset_is_reported_misplaced_with_the_shift() {
    let Some(mut f) = planted(Defect::DropsInPageOffset) else {
        return;
    };
    let m = f.get(OracleKind::MisplacedWrite).clone();
    assert_eq!(m.count, 1, "{m:?}");
    let what = &m.examples[0].what;
    assert!(
        what.contains("4096..4429") && what.contains("-77 bytes"),
        "{what}"
    );
    assert_eq!(f.get(OracleKind::LostWrite).count, 0);
}

#[test]
fn a_device_that_writes_a_byte_past_the_end_is_reported_as_a_spill_of_that_byte() {
    let Some(mut f) = planted(Defect::OneBytePastTheEnd) else {
        return;
    };
    let s = f.get(OracleKind::Spill).clone();
    assert_eq!(s.count, 1, "{s:?}");
    let what = &s.examples[0].what;
    assert!(what.contains("4506..4507"), "{what}");
    assert_eq!(f.get(OracleKind::MisplacedWrite).count, 0);
}
