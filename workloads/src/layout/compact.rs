//! `compact`: write 1 to `/proc/sys/vm/compact_memory`, which compacts every zone now. A
//! trigger with nothing to restore. Compaction migrates movable pages; a pinned page must
//! not move (its mapping would point at the new frame while the device writes the old).

use rand::RngCore;

use super::{err, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget, Requirement};

pub struct Compact;

const TRIGGER: &str = "/proc/sys/vm/compact_memory";

impl LayoutOp for Compact {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Compact
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn requires(&self) -> &'static [Requirement] {
        &[Requirement::Root]
    }

    fn unavailable(&self, _t: &LayoutTarget) -> Option<String> {
        (!std::path::Path::new(TRIGGER).exists())
            .then(|| format!("no {TRIGGER} (a kernel without CONFIG_COMPACTION)"))
    }

    fn apply(&self, t: &LayoutTarget, _rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        std::fs::write(TRIGGER, "1").map_err(|e| {
            err(
                "write(/proc/sys/vm/compact_memory)",
                crate::sys::Errno::from_io(&e).unwrap_or(crate::sys::Errno(libc::EIO)),
            )
        })?;
        Ok(Applied {
            effect: Effect::Remapped {
                offset: 0,
                len: t.mapping.len() as u64,
                contents: false,
            },
            desc: "compact_memory".into(),
        })
    }
}
