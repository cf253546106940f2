//! `punch-hole`, `zero-range`, `collapse-range`, `insert-range`: one `fallocate(2)` each,
//! over a random aligned range. Collapse and insert change the file size; it is put back so
//! the pinned mapping stays backed.

use rand::RngCore;
use rustix::fs::{fallocate, ftruncate, FallocateFlags};

use super::{err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget};

pub struct Fallocate(pub LayoutKind);

impl LayoutOp for Fallocate {
    fn kind(&self) -> LayoutKind {
        self.0
    }

    /// Collapse shrinks the file before it is re-extended.
    fn cuts_file(&self) -> bool {
        self.0 == LayoutKind::CollapseRange
    }

    fn unavailable(&self, t: &LayoutTarget) -> Option<String> {
        let shifts = matches!(self.0, LayoutKind::CollapseRange | LayoutKind::InsertRange);
        (shifts && t.size / t.align < 2).then(|| {
            format!(
                "{} needs a file of at least two {}-byte units",
                self.0, t.align
            )
        })
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let f = t.file().file();
        match self.0 {
            LayoutKind::PunchHole | LayoutKind::ZeroRange => {
                let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
                let (flags, name) = if self.0 == LayoutKind::PunchHole {
                    (
                        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                        "fallocate(PUNCH_HOLE)",
                    )
                } else {
                    (
                        FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
                        "fallocate(ZERO_RANGE)",
                    )
                };
                fallocate(f, flags, off, len).map_err(|e| err(name, e))?;
                Ok(Applied {
                    effect: Effect::Invalidated { offset: off, len },
                    desc: format!("{} {off}+{len}", self.0),
                })
            }
            LayoutKind::CollapseRange => {
                let (off, len) =
                    pick_range(rng, t.size, t.align, 1).expect("checked by unavailable()");
                fallocate(f, FallocateFlags::COLLAPSE_RANGE, off, len)
                    .map_err(|e| err("fallocate(COLLAPSE_RANGE)", e))?;
                ftruncate(f, t.size).map_err(|e| LayoutError {
                    op: "ftruncate(extend)",
                    errno: e.into(),
                    partial: Some(Effect::Shifted { offset: off }),
                    cause: None,
                })?;
                Ok(Applied {
                    effect: Effect::Shifted { offset: off },
                    desc: format!("collapse {off}+{len}"),
                })
            }
            LayoutKind::InsertRange => {
                let (off, len) =
                    pick_range(rng, t.size, t.align, 1).expect("checked by unavailable()");
                fallocate(f, FallocateFlags::INSERT_RANGE, off, len)
                    .map_err(|e| err("fallocate(INSERT_RANGE)", e))?;
                ftruncate(f, t.size).map_err(|e| LayoutError {
                    op: "ftruncate(shrink)",
                    errno: e.into(),
                    partial: Some(Effect::Shifted { offset: off }),
                    cause: None,
                })?;
                Ok(Applied {
                    effect: Effect::Shifted { offset: off },
                    desc: format!("insert {off}+{len}"),
                })
            }
            other => unreachable!("not a fallocate operation: {other}"),
        }
    }
}
