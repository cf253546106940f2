//! A disruptor thread: change the layout of a random file of the cell with a random one of
//! the job's operations, at the configured rate, from its own seeded RNG so a seed replays
//! the same sequence. Each operation is announced to the file's oracle state before it
//! starts and logged, with what it did, before it counts as ended.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use pinstorm_analysis::hist::Latency;
use pinstorm_workloads::layout::LayoutKind;

use super::state::{StormState, Timeline};

/// Operations of the sequence head kept per disruptor.
const HEAD: usize = 32;

/// One layout operation's count, latency and errors in one disruptor.
#[derive(Default)]
pub struct OpStats {
    pub latency: Latency,
    pub count: u64,
    pub errors: BTreeMap<String, u64>,
}

/// What one disruptor thread did.
#[derive(Default)]
pub struct DisruptorOut {
    pub ops: BTreeMap<LayoutKind, OpStats>,
    pub timeline: Timeline,
    /// The first operations it ran, for `sequence_head`.
    pub head: Vec<String>,
}

pub fn disruptor_thread(
    storm: Arc<StormState>,
    slot_index: usize,
    ops: Vec<LayoutKind>,
    seed: u64,
) -> DisruptorOut {
    let mut out = DisruptorOut::default();
    let slot = storm.wd.slot(slot_index);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let boxed: Vec<_> = ops.iter().map(|k| k.op()).collect();
    let interval = (storm.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / storm.rate));
    while !storm.stop.load(SeqCst) {
        let started = Instant::now();
        let k = (rng.next_u64() % ops.len() as u64) as usize;
        let fi = (rng.next_u64() % storm.files.len() as u64) as usize;
        let kind = ops[k];
        let unsupported = storm.unsupported().len();
        if unsupported >= ops.len() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if storm.unsupported().contains_key(&kind) {
            continue;
        }
        let f = &storm.files[fi];
        let target = storm.target(fi);
        if let Some(why) = boxed[k].cannot_run(&target) {
            storm.unsupported().entry(kind).or_insert(why);
            continue;
        }
        let mut op = f.state.op_begin(&storm.events);
        op.kind = Some(kind);
        let ev = op.event;
        storm.wd.begin(&slot, kind.name());
        let t0 = Instant::now();
        let r = boxed[k].apply(&target, &mut rng);
        let took = t0.elapsed();
        storm.wd.end(&slot);
        let effect = match &r {
            Ok(a) => Some(a.effect),
            Err(e) => e.partial,
        };
        let now = storm.wd.elapsed_ms();
        let text = match &r {
            Ok(a) => a.desc.clone(),
            Err(e) => format!("{e}"),
        };
        // Operations the filesystem does not have changed nothing: keep them out of histories.
        if !matches!(&r, Err(e) if e.is_unsupported()) {
            f.record_op(
                ev,
                format!(
                    "{:.3} ms: {kind} (event {ev}): {text}",
                    now - took.as_secs_f64() * 1e3
                ),
            );
        }
        // The log is complete: only now may a pinner judge writes on this file again.
        f.state.op_end(op, effect, &storm.events);
        if out.head.len() < HEAD {
            out.head.push(format!("{kind} file={fi}: {text}"));
        }
        let st = out.ops.entry(kind).or_default();
        st.count += 1;
        match &r {
            Ok(_) => {
                st.latency.record(took.as_nanos() as u64);
                out.timeline.at(now).layout_ops += 1;
            }
            Err(e) if e.is_unsupported() => {
                storm
                    .unsupported()
                    .entry(kind)
                    .or_insert_with(|| format!("{}: {}", e.op, e.errno.name()));
                st.count -= 1;
            }
            Err(e) => {
                *st.errors.entry(e.key()).or_default() += 1;
                out.timeline.at(now).layout_errors += 1;
            }
        }
        if let Some(iv) = interval {
            if let Some(rest) = iv.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    out
}
