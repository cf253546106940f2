//! `dedupe`: copy a range of the pinned file into the clone file, then `FIDEDUPERANGE` the
//! copy against the pinned range, so the pinned file's blocks become shared without its
//! contents changing. If a device write lands in between, the kernel answers "differs" and
//! nothing changes.

use std::os::unix::fs::FileExt;

use rand::RngCore;

use super::{
    err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget, Partner,
};
use crate::sys::{fideduperange, Dedupe as Status, Errno};

pub struct Dedupe;

impl LayoutOp for Dedupe {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Dedupe
    }

    fn partners(&self) -> &'static [Partner] {
        &[Partner::Clone]
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let f = t.file().file();
        let clone = t.partner(Partner::Clone).file();
        let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
        let mut buf = vec![0u8; len as usize];
        let io = |e: std::io::Error| {
            err(
                "copy for dedupe",
                Errno::from_io(&e).unwrap_or(Errno(libc::EIO)),
            )
        };
        f.read_exact_at(&mut buf, off).map_err(io)?;
        clone.write_all_at(&buf, off).map_err(io)?;
        let desc =
            match fideduperange(clone, off, len, f, off).map_err(|e| err("FIDEDUPERANGE", e))? {
                Status::Same { bytes } => format!("dedupe {off}+{len}: {bytes} bytes shared"),
                Status::Differs => format!("dedupe {off}+{len}: differs, nothing shared"),
            };
        Ok(Applied {
            effect: Effect::Shared { offset: off, len },
            desc,
        })
    }
}
