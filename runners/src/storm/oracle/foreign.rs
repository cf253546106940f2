//! The stale-exposure and cross-file oracles: a page that holds a canary it should not (this
//! file's data from before an operation removed it, another file's data, another run's).

use pinstorm_analysis::oracle::OracleKind;
use pinstorm_workloads::canary::{self, PageContent};

use super::{Events, FileState, PAGE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignKind {
    Stale,
    Cross,
}

impl ForeignKind {
    pub fn oracle(self) -> OracleKind {
        match self {
            ForeignKind::Stale => OracleKind::StaleExposure,
            ForeignKind::Cross => OracleKind::CrossFile,
        }
    }
}

/// A page that holds what it should not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    pub kind: ForeignKind,
    /// The event of the write whose canary the page holds (to count each finding once).
    pub event: u64,
    pub what: String,
}

/// Judge what page `page_off` of file `f` holds instead of what it should: stale or
/// cross-file, or nothing to report.
pub fn classify_foreign(
    run_tag: u32,
    f: &FileState,
    events: &Events,
    page_off: u64,
    content: &[u8],
) -> Option<Foreign> {
    let PageContent::Canary(c) = canary::decode(content) else {
        return None;
    };
    let track = f.page((page_off / PAGE) as usize);
    if c.run_tag != run_tag {
        Some(Foreign {
            kind: ForeignKind::Stale,
            event: c.event,
            what: format!(
                "holds a canary of another run (tag {:#x}, file {}, offset {})",
                c.run_tag, c.file_id, c.offset
            ),
        })
    } else if c.file_id != f.id {
        Some(Foreign {
            kind: ForeignKind::Cross,
            event: c.event,
            what: format!(
                "holds data the device wrote for file {} at offset {} (event {})",
                c.file_id, c.offset, c.event
            ),
        })
    } else if c.offset == page_off
        && c.event > track.shifted_until
        && events.write_completed_before(c.event, track.invalidated_at)
    {
        Some(Foreign {
            kind: ForeignKind::Stale,
            event: c.event,
            what: format!(
                "still holds the device's write of event {} although an operation at event {} removed that data",
                c.event, track.invalidated_at
            ),
        })
    } else {
        None
    }
}
