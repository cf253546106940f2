//! Lease-check overhead, measured in the holder: register + unregister of the pinned mapping
//! with a lease held and without, in interleaved blocks so both sides see the same machine
//! state.

use std::time::Instant;

use super::pin::{map_shared, target};
use super::{open_or_refuse, Reporter};
use crate::lease::protocol::{Event, HolderConfig};
use crate::lease::{set_lease, set_sig};

/// Cycles per block before switching sides.
const BLOCK: u32 = 16;

pub(super) fn run(out: &Reporter, cfg: &HolderConfig, cycles: u32) {
    let len = cfg.pin_len.unwrap_or(2 << 20);
    let Some(file) = open_or_refuse(out, cfg, true) else {
        return;
    };
    let mapping = match map_shared(&file, len) {
        Ok(m) => m,
        Err(e) => return out.refused("mmap", e.name()),
    };
    let target = target(&mapping);
    let mut pinner = match cfg.pin.path(&cfg.pins).pinner() {
        Ok(p) => p,
        Err(e) => return out.error(e.to_string()),
    };
    if let Err(e) = set_sig(&file, cfg.signal) {
        return out.refused("F_SETSIG", e.name());
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut cycle = |v: &mut Vec<u64>| -> Result<(), String> {
        let t = Instant::now();
        pinner.register(target).map_err(|e| e.to_string())?;
        pinner.unregister().map_err(|e| e.to_string())?;
        v.push(t.elapsed().as_nanos() as u64);
        Ok(())
    };
    let mut done = 0;
    while done < cycles {
        let n = BLOCK.min(cycles - done);
        for _ in 0..n {
            if let Err(e) = cycle(&mut without) {
                return out.refused("register", e);
            }
        }
        if let Err(e) = set_lease(&file, Some(cfg.lease), cfg.extra_flags) {
            return out.refused("F_SETLEASE", e.name());
        }
        for _ in 0..n {
            if let Err(e) = cycle(&mut with) {
                return out.refused("register (lease held)", e);
            }
        }
        let _ = set_lease(&file, None, 0);
        done += n;
    }
    out.emit(&Event::Samples { without, with });
}
