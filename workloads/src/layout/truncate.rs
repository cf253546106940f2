//! `truncate`: shrink the file to 0 or to a random aligned size, then re-extend it to its
//! full size. Everything past the shrink point is gone from the file; a pin on those pages
//! keeps pages that are no longer part of it.

use rand::RngCore;

use super::{err, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget};

pub struct Truncate;

impl LayoutOp for Truncate {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Truncate
    }

    fn cuts_file(&self) -> bool {
        true
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let units = t.size / t.align;
        let new = if rng.next_u64() % 2 == 0 || units <= 1 {
            0
        } else {
            (rng.next_u64() % units) * t.align
        };
        let f = t.file().file();
        rustix::fs::ftruncate(f, new).map_err(|e| err("ftruncate(shrink)", e))?;
        rustix::fs::ftruncate(f, t.size).map_err(|e| LayoutError {
            op: "ftruncate(extend)",
            errno: e.into(),
            partial: Some(Effect::Invalidated {
                offset: new,
                len: t.size - new,
            }),
            cause: None,
        })?;
        Ok(Applied {
            effect: Effect::Invalidated {
                offset: new,
                len: t.size - new,
            },
            desc: format!("truncate to {new}, back to {}", t.size),
        })
    }
}
