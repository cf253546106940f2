//! `migrate`: `move_pages(2)` a random range of the pinned mapping to another NUMA node. A
//! long-term pin must keep its pages where they are: each pinned page's status is an errno
//! (EBUSY), and the mapping keeps pointing at the pinned frame. Needs two online nodes.

use rand::RngCore;

use super::requires::online_nodes;
use super::sys::move_pages;
use super::{
    err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget, Requirement,
};

pub struct Migrate;

impl LayoutOp for Migrate {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Migrate
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn requires(&self) -> &'static [Requirement] {
        &[Requirement::TwoNodes]
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
        let nodes =
            online_nodes().map_err(|_| err("reading node list", crate::sys::Errno(libc::EIO)))?;
        let here = move_pages(t.mapping, off as usize, len as usize, None)
            .map_err(|e| err("move_pages(query)", e))?;
        let from = here.first().copied().unwrap_or(0);
        let to = nodes.iter().copied().find(|n| *n != from).unwrap_or(from);
        let status = move_pages(t.mapping, off as usize, len as usize, Some(to))
            .map_err(|e| err("move_pages", e))?;
        let moved = status.iter().filter(|s| **s == to).count();
        let mut refused = std::collections::BTreeMap::<String, usize>::new();
        for s in status.iter().filter(|s| **s != to) {
            // A page that failed to migrate without an errno of its own keeps its node as its
            // status (move_pages then returns how many did not move).
            let k = if *s < 0 {
                crate::sys::Errno(-s).name()
            } else {
                format!("stayed on node {s}")
            };
            *refused.entry(k).or_default() += 1;
        }
        let refused: Vec<String> = refused.iter().map(|(e, n)| format!("{e} x{n}")).collect();
        Ok(Applied {
            effect: Effect::Remapped {
                offset: off,
                len,
                contents: false,
            },
            desc: format!(
                "move_pages {off}+{len} node {from} -> {to}: {moved} of {} moved{}",
                status.len(),
                if refused.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", refused.join(", "))
                }
            ),
        })
    }
}
