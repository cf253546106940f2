//! `reflink-out`, `reflink-range-out`, `reflink-range-in`: block sharing with `FICLONE` /
//! `FICLONERANGE`. Out of the pinned file into a clone (the pinned file's blocks become
//! shared, so the next write to them must copy on write), and into the pinned file from a
//! donor (the pinned range's blocks are replaced).

use rand::RngCore;

use super::{
    err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget, Partner,
};
use crate::sys::ficlonerange;

pub struct Reflink(pub LayoutKind);

impl LayoutOp for Reflink {
    fn kind(&self) -> LayoutKind {
        self.0
    }

    fn partners(&self) -> &'static [Partner] {
        if self.0 == LayoutKind::ReflinkRangeIn {
            &[Partner::Donor]
        } else {
            &[Partner::Clone]
        }
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let f = t.file().file();
        match self.0 {
            LayoutKind::ReflinkOut => {
                let clone = t.partner(Partner::Clone).file();
                rustix::fs::ioctl_ficlone(clone, f).map_err(|e| err("FICLONE", e))?;
                Ok(Applied {
                    effect: Effect::Shared {
                        offset: 0,
                        len: t.size,
                    },
                    desc: "clone whole file out".into(),
                })
            }
            LayoutKind::ReflinkRangeOut => {
                let clone = t.partner(Partner::Clone).file();
                let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
                ficlonerange(clone, f, off, len, off).map_err(|e| err("FICLONERANGE(out)", e))?;
                Ok(Applied {
                    effect: Effect::Shared { offset: off, len },
                    desc: format!("clone {off}+{len} out"),
                })
            }
            LayoutKind::ReflinkRangeIn => {
                let donor = t.partner(Partner::Donor).file();
                let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
                ficlonerange(f, donor, off, len, off).map_err(|e| err("FICLONERANGE(in)", e))?;
                Ok(Applied {
                    effect: Effect::Invalidated { offset: off, len },
                    desc: format!("clone donor {off}+{len} in"),
                })
            }
            other => unreachable!("not a reflink operation: {other}"),
        }
    }
}
