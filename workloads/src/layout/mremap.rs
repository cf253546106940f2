//! `mremap-move`, `mremap-grow`: move the whole pinned mapping to a reserved address and back
//! (MREMAP_DONTUNMAP keeps the original range mapped meanwhile); `grow` also grows it in
//! place to twice its length there and shrinks it back before the return. Either way the
//! mapping is at its address with its length when the operation returns, because pinners
//! use it. Moving a mapping moves its page tables, not its pages: the pin must still see
//! what the process sees.

use rand::RngCore;

use super::sys::remap_away_and_back;
use super::{Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget};

pub struct Mremap(pub LayoutKind);

impl LayoutOp for Mremap {
    fn kind(&self) -> LayoutKind {
        self.0
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn apply(&self, t: &LayoutTarget, _rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let grow = self.0 == LayoutKind::MremapGrow;
        let len = t.mapping.len() as u64;
        remap_away_and_back(t.mapping, grow).map_err(|(op, errno)| LayoutError {
            op,
            errno,
            // Only a failed move back leaves the data stranded away from the mapping.
            partial: Some(Effect::Remapped {
                offset: 0,
                len,
                contents: op == "mremap(back)",
            }),
            cause: None,
        })?;
        Ok(Applied {
            effect: Effect::Remapped {
                offset: 0,
                len,
                contents: false,
            },
            desc: if grow {
                format!("mremap away, grow to {}, shrink, back", 2 * len)
            } else {
                "mremap away and back".into()
            },
        })
    }
}
