//! The blocked oracle: pinners and layout operations that stayed inside one call beyond the
//! threshold, as the storm's watchdog saw them.

use std::time::Duration;

use pinstorm_analysis::schema::{Blocked, BlockedOp};

/// The finding from the watchdog's reports, with at most `examples * 4` (at least 4) of them.
pub fn judge(reports: Vec<BlockedOp>, threshold: Duration, examples: usize) -> Blocked {
    Blocked {
        count: reports.len() as u64,
        threshold_ms: threshold.as_millis() as u64,
        examples: reports.into_iter().take(examples.max(1) * 4).collect(),
    }
}
