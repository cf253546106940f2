//! `migrate`: `move_pages(2)` a random range of the pinned mapping to another NUMA node. A
//! long-term pin must keep its pages where they are: each pinned page's status is an errno
//! (EBUSY), and the mapping keeps pointing at the pinned frame. Needs two online nodes.

use rand::RngCore;

use super::sys::move_pages;
use super::{err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget};

pub struct Migrate;

const ONLINE: &str = "/sys/devices/system/node/online";

/// The node numbers of a sysfs node list (`0`, `0-1`, `0,2-3`).
pub(crate) fn parse_nodes(list: &str) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<i32>().ok()?, b.parse::<i32>().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

fn online_nodes() -> Result<Vec<i32>, String> {
    let text = std::fs::read_to_string(ONLINE).map_err(|e| format!("reading {ONLINE}: {e}"))?;
    parse_nodes(&text).ok_or_else(|| format!("{ONLINE} holds {:?}, not a node list", text.trim()))
}

impl LayoutOp for Migrate {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Migrate
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn unavailable(&self, _t: &LayoutTarget) -> Option<String> {
        match online_nodes() {
            Err(e) => Some(e),
            Ok(n) if n.len() < 2 => Some(format!(
                "one NUMA node ({ONLINE}: {}): there is nowhere to migrate to",
                n.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Ok(_) => None,
        }
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
        for s in status.iter().filter(|s| **s < 0) {
            *refused.entry(crate::sys::Errno(-s).name()).or_default() += 1;
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

#[cfg(test)]
mod tests {
    use super::parse_nodes;

    #[test]
    fn node_lists_parse_as_sysfs_writes_them() {
        assert_eq!(parse_nodes("0\n"), Some(vec![0]));
        assert_eq!(parse_nodes("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_nodes("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_nodes("x"), None);
        assert_eq!(parse_nodes("3-1"), None);
    }
}
