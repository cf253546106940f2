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
    /// Must never be asked to write: the test fails if it is.
    MustNotWrite,
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
            Defect::MustNotWrite => panic!("the device was asked to write {offset}+{}", data.len()),
        }
    }
    fn device_read(&mut self, offset: usize, len: usize) -> Result<Vec<u8>, PinError> {
        self.inner.device_read(offset, len)
    }
}

/// One write of 333 bytes at offset 4096+77 through the shim; the findings.
fn planted(defect: Defect) -> Option<Findings> {
    let (findings, out) = planted_after(defect, |_| {})?;
    assert_eq!(out.totals.device_writes, 1);
    Some(findings)
}

/// As `planted`, with `before` done to the file after the pin and before the write; the
/// findings and the pinner's counts.
fn planted_after(
    defect: Defect,
    before: impl FnOnce(&TrackedFile),
) -> Option<(Findings, PinnerOut)> {
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
        hugetlb: false,
        rate: 0.0,
        shapes: vec![],
        write_at: None,
        cpu_view: false,
        env: Default::default(),
        frames_notrun: None,
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
    before(f);
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
    let findings = std::mem::take(&mut *storm.findings());
    Some((findings, out))
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

/// A truncate in flight leaves the file shorter than the write's window: the write is not
/// issued (the device shim fails the test if asked to write), and it is counted as skipped,
/// neither ambiguous nor written, so every device write stays verified, ambiguous or a
/// finding.
#[test]
fn a_write_whose_window_cannot_be_read_is_skipped_not_issued_and_not_called_ambiguous() {
    let Some((mut f, out)) = planted_after(Defect::MustNotWrite, |tf| {
        let rf = tf.region.file.as_ref().expect("a memfd has a file");
        rf.file().set_len(4096).expect("truncating the memfd");
    }) else {
        return;
    };
    assert_eq!(out.totals.skipped_writes, 1, "{:?}", out.totals);
    assert_eq!(out.totals.device_writes, 0);
    assert_eq!(out.totals.ambiguous, 0);
    assert_eq!(out.totals.verified, 0);
    for k in [
        OracleKind::LostWrite,
        OracleKind::Spill,
        OracleKind::MisplacedWrite,
    ] {
        assert_eq!(f.get(k).count, 0, "{k}");
    }
}
