//! A pinner thread: register a pin on the whole file, hold it, let the device write a
//! canary page through it and judge where the write went, let the device read it back,
//! unregister; again until the cell stops.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use pinstorm_analysis::oracle::OracleKind;
use pinstorm_analysis::schema::Violation;
use pinstorm_workloads::canary::{self, Canary, PageContent};
use pinstorm_workloads::pin::PinError;
use pinstorm_workloads::shape::WriteShape;

use super::oracle::lost_write::{self, Evidence, Mapping, Verdict, WriteFacts};
use super::oracle::{self, PAGE};
use super::shaped;
use super::state::{StormState, TrackedFile};
use super::{frames, views};

pub use super::state::PinnerOut;

pub fn pinner_thread(storm: Arc<StormState>, i: usize, seed: u64) -> PinnerOut {
    let mut out = PinnerOut::default();
    let slot = storm.wd.slot(i);
    let f = &storm.files[i];
    let mut pinner = match storm.path.pinner() {
        Ok(p) => p,
        Err(PinError::Tool(e)) => {
            out.error = Some(e);
            return out;
        }
        Err(e) => {
            out.notrun = Some(format!("creating the pinner: {e}"));
            return out;
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let target = f.region.pin_target();
    let pages = target.len as u64 / PAGE;
    let pagemap = storm
        .frames_notrun
        .is_none()
        .then(frames::open)
        .and_then(Result::ok);
    // A path without device writes (vmsplice) only registers; `cell_notes` says why.
    let mut can_write = storm.path.device_writes().is_supported();
    let unit = pinner.transfer_unit();
    let shapes: Vec<WriteShape> = storm
        .shapes
        .iter()
        .copied()
        .filter(|s| match s.unavailable(target.len as u64, unit) {
            Some(why) => {
                out.shapes_notrun.insert(why);
                false
            }
            None => true,
        })
        .collect();
    if let Some(w) = storm.write_at {
        if w.offset + w.len > target.len as u64 {
            can_write = false;
            out.write_notrun = Some(format!(
                "--write-at {w} reaches beyond the pinned file ({} bytes)",
                target.len
            ));
        }
    } else if shapes.is_empty() && can_write {
        can_write = false;
        out.write_notrun = Some(format!(
            "no write shape of the job can be drawn here: {}",
            out.shapes_notrun
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    while !storm.stop.load(SeqCst) {
        let a = f.state.snapshot();
        storm.wd.begin(&slot, "register");
        let t0 = Instant::now();
        let r = pinner.register(target);
        let took = t0.elapsed();
        storm.wd.end(&slot);
        // The pin's event comes before the second look at the file's operations (see
        // `FileState::op_begin`): every operation that did not overlap the registration is
        // ordered.
        let pin_event = storm.events.next();
        let pin = (a, f.state.snapshot());
        let clean = oracle::quiet(pin.0, pin.1);
        let now = storm.wd.elapsed_ms();
        let outcome = match &r {
            Ok(()) => "ok".to_string(),
            Err(e @ (PinError::Kernel { .. } | PinError::Device { .. })) => {
                e.outcome().unwrap_or_default()
            }
            Err(PinError::NotRun(m)) => {
                out.notrun = Some(m.clone());
                break;
            }
            Err(PinError::Tool(e)) => {
                out.error = Some(anyhow::anyhow!("pinner {i}: register: {e:#}"));
                break;
            }
        };
        if let Some(what) = oracle::unexpected::judge(storm.expected.as_ref(), clean, &outcome) {
            storm.findings().add(
                OracleKind::UnexpectedOutcomes,
                storm.examples,
                Violation {
                    file: f.name.clone(),
                    offset: 0,
                    len: target.len as u64,
                    what,
                    at_ms: now,
                    history: vec![],
                },
            );
        }
        if r.is_err() {
            *out.totals.register_errors.entry(outcome).or_default() += 1;
            out.timeline.at(now).register_errors += 1;
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        out.register.record(took.as_nanos() as u64);
        out.totals.registrations += 1;
        out.timeline.at(now).registrations += 1;
        let pinned_ms = now;
        let vpin = views::Pin {
            around: pin,
            event: pin_event,
            at_ms: pinned_ms,
        };
        let frames_before = views::frames_after_pin(&storm, f, pagemap.as_ref(), &vpin);
        // The page the CPU-to-device check writes: the canary's, if one was written.
        let mut check_at = (out.totals.registrations % pages) * PAGE;
        if !storm.hold.is_zero() {
            std::thread::sleep(storm.hold);
        }
        // Only a job with several shapes draws one, so page-only jobs replay as before.
        let shape = match shapes.len() {
            0 | 1 => shapes.first().copied().unwrap_or(WriteShape::Page),
            n => shapes[(rng.next_u64() % n as u64) as usize],
        };
        if let (true, Some(w)) = (can_write, storm.write_at) {
            let p = shaped::Pin {
                around: pin,
                event: pin_event,
                at_ms: pinned_ms,
            };
            let at = (w.offset, w.len);
            shaped::write(&storm, f, &mut *pinner, &slot, &mut out, "write-at", at, &p);
        } else if can_write && shape != WriteShape::Page {
            let at = shape.draw(&mut rng, target.len as u64, unit);
            let p = shaped::Pin {
                around: pin,
                event: pin_event,
                at_ms: pinned_ms,
            };
            shaped::write(
                &storm,
                f,
                &mut *pinner,
                &slot,
                &mut out,
                shape.name(),
                at,
                &p,
            );
        } else if can_write {
            let off = (rng.next_u64() % pages) * PAGE;
            let ev = storm.events.next();
            let data = Canary {
                run_tag: storm.run_tag,
                file_id: f.state.id,
                offset: off,
                event: ev,
            }
            .page(PAGE as usize);
            let s0 = f.state.snapshot();
            storm.wd.begin(&slot, "device-write");
            let w = pinner.device_write(off as usize, &data);
            storm.wd.end(&slot);
            storm.events.write_done(ev);
            let wrote_ms = storm.wd.elapsed_ms();
            match w {
                Ok(_) => {
                    out.totals.device_writes += 1;
                    *out.totals.writes_by_shape.entry("page".into()).or_default() += 1;
                    out.timeline.at(wrote_ms).device_writes += 1;
                    let mut content = vec![0u8; PAGE as usize];
                    let read = match (&f.region.file, storm.mapping) {
                        // Anonymous memory is never truncated, so the CPU may read the mapping.
                        (None, _) => {
                            f.region.mapping.read_at(off as usize, &mut content);
                            true
                        }
                        // A private mapping's writes never reach the file by design.
                        (Some(_), Mapping::PrivateFile) => false,
                        // Never touch a file mapping with the CPU (a truncated page would
                        // SIGBUS): pread.
                        (Some(rf), _) => rf.file().read_exact_at(&mut content, off).is_ok(),
                    };
                    // What the process sees through its mapping, where the CPU may look.
                    let view = match &f.region.file {
                        None => Some(content.clone()),
                        Some(_) if storm.cpu_view => {
                            let mut v = vec![0u8; PAGE as usize];
                            f.region.mapping.read_at(off as usize, &mut v);
                            Some(v)
                        }
                        Some(_) => None,
                    };
                    let s1 = f.state.snapshot();
                    let read_ms = storm.wd.elapsed_ms();
                    storm.wd.begin(&slot, "device-read");
                    let back = pinner.device_read(off as usize, PAGE as usize).ok();
                    storm.wd.end(&slot);
                    let s2 = f.state.snapshot();
                    if matches!(&back, Some(b) if *b != data) {
                        out.totals.readback_mismatches += 1;
                    }
                    check_at = off;
                    views::device_to_cpu(
                        &storm,
                        f,
                        &mut out,
                        &vpin,
                        off,
                        (&data, back.as_deref(), view.as_deref()),
                        (s0, s2),
                        wrote_ms,
                    );
                    let facts = WriteFacts {
                        mapping: storm.mapping,
                        pin,
                        write: (s0, s1),
                        readback_done: s2,
                        data: &data,
                        file: read.then_some(&content[..]),
                        readback: back.as_deref(),
                    };
                    match lost_write::judge(&facts) {
                        Verdict::Verified => out.totals.verified += 1,
                        Verdict::Ambiguous => out.totals.ambiguous += 1,
                        Verdict::Lost(evidence) => {
                            let (found, read_ms) = match evidence {
                                Evidence::File => (&content[..], read_ms),
                                Evidence::ReadBack => {
                                    (back.as_deref().unwrap_or_default(), storm.wd.elapsed_ms())
                                }
                            };
                            report_lost(
                                &storm,
                                f,
                                off,
                                (evidence, found, read_ms),
                                (pin_event, pinned_ms),
                                (ev, wrote_ms),
                            )
                        }
                    }
                }
                // A refusal by the kernel or a failed transfer reported by the device (an RDMA
                // completion error, say after an ODP invalidation): counted by name.
                Err(e @ (PinError::Kernel { .. } | PinError::Device { .. })) => {
                    let name = e.outcome().unwrap_or_default();
                    *out.totals.device_write_errors.entry(name).or_default() += 1;
                }
                Err(PinError::NotRun(m)) => {
                    can_write = false;
                    out.write_notrun = Some(m);
                }
                Err(PinError::Tool(e)) => {
                    out.error = Some(anyhow::anyhow!("pinner {i}: device write: {e:#}"));
                }
            }
        }
        if storm.cpu_view && storm.path.device_reads().is_supported() && out.error.is_none() {
            views::cpu_to_device(&storm, f, &mut *pinner, &slot, &mut out, &vpin, check_at);
        }
        if let Some(before) = &frames_before {
            views::moved_before_unpin(&storm, f, pagemap.as_ref(), &mut out, &vpin, before);
        }
        storm.wd.begin(&slot, "unregister");
        let u = pinner.unregister();
        storm.wd.end(&slot);
        if let Err(e) = u {
            out.error = Some(anyhow::anyhow!("pinner {i}: unregister: {e}"));
        }
        if out.error.is_some() {
            break;
        }
    }
    drop(pinner);
    out
}

/// What a page holds, in words.
fn describe(content: &[u8]) -> String {
    match canary::decode(content) {
        PageContent::Zero => "zeros".to_string(),
        PageContent::Fill(b) => format!("a fill of {b:#04x} bytes"),
        PageContent::Canary(c) => format!(
            "a canary of file {} offset {} event {}",
            c.file_id, c.offset, c.event
        ),
        PageContent::Torn => "a torn page".into(),
        PageContent::Other => "other data".into(),
    }
}

/// A lost write: what was read instead (by the CPU from the file or memory, or by the
/// device through the pin), with the history that led there.
fn report_lost(
    storm: &StormState,
    f: &TrackedFile,
    off: u64,
    (evidence, content, read_ms): (Evidence, &[u8], f64),
    (pin_event, pinned_ms): (u64, f64),
    (ev, wrote_ms): (u64, f64),
) {
    let found = describe(content);
    let mut history = vec![format!(
        "{pinned_ms:.3} ms: pinned the whole file (event {pin_event})"
    )];
    history.extend(f.history(pin_event));
    history.push(format!(
        "{wrote_ms:.3} ms: device wrote the canary of event {ev} at offset {off}"
    ));
    let (by, what) = match evidence {
        Evidence::File => ("the file", format!(
            "the device's write through a pin taken while the range was part of the file is not in the file (it holds {found})"
        )),
        Evidence::ReadBack => ("the device", format!(
            "the device's write into the private copy it pinned is not there when it reads it back (it read {found})"
        )),
    };
    history.push(format!("{read_ms:.3} ms: {by} read back {found}"));
    {
        storm.findings().add(
            OracleKind::LostWrite,
            storm.examples,
            Violation {
                file: f.name.clone(),
                offset: off,
                len: PAGE,
                what,
                at_ms: wrote_ms,
                history: history.clone(),
            },
        );
    }
    if evidence == Evidence::File {
        storm.classify_foreign(f, off, content, read_ms, &history);
    }
}
