//! The shapes of the device's writes through a pin: where in the pinned range they start
//! and how long they are. A real device writes at any offset and length (a few bytes into the
//! middle of a page, across page and huge-page boundaries, in packets of the path MTU); a bug
//! that loses the in-page offset, splits a transfer at the wrong boundary or repeats a chunk
//! shows only with such writes, never with page-aligned whole pages.
//!
//! Each storm names the shapes it draws from (`shapes` in `[storm]`); every write draws one
//! shape uniformly, then its offset and length, from the pinner's seeded generator, so a seed
//! replays the same writes.

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The page the oracles reason in, whatever the backing's page size.
pub const PAGE: u64 = 4096;
/// The huge-page boundary `huge-page-crossing` writes cross.
pub const HUGE_PAGE: u64 = 2 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteShape {
    /// One whole page at a page-aligned offset (a canary page the end scan can decode).
    Page,
    /// 1 byte up to the rest of the page, at any offset within a page (odd ones included).
    SubPage,
    /// Starts in one page and ends in the next, at any offsets.
    PageCrossing,
    /// Crosses a 2 MiB boundary (needs a pinned range larger than 2 MiB).
    HugePageCrossing,
    /// More than a page, up to the end of the pinned range, at any offset.
    MultiPage,
    /// Lengths around the device's transfer unit (the RDMA path MTU): one unit, one byte
    /// less or more, several units and a byte (needs a pin path with packets).
    Packets,
}

impl WriteShape {
    pub const ALL: &'static [WriteShape] = &[
        WriteShape::Page,
        WriteShape::SubPage,
        WriteShape::PageCrossing,
        WriteShape::HugePageCrossing,
        WriteShape::MultiPage,
        WriteShape::Packets,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WriteShape::Page => "page",
            WriteShape::SubPage => "sub-page",
            WriteShape::PageCrossing => "page-crossing",
            WriteShape::HugePageCrossing => "huge-page-crossing",
            WriteShape::MultiPage => "multi-page",
            WriteShape::Packets => "packets",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            WriteShape::Page => "one whole 4 KiB page at a page-aligned offset",
            WriteShape::SubPage => "1 byte to the rest of a page, at any offset in the page",
            WriteShape::PageCrossing => "from inside one page into the next",
            WriteShape::HugePageCrossing => "across a 2 MiB boundary",
            WriteShape::MultiPage => "more than a page, at any offset, up to the whole range",
            WriteShape::Packets => {
                "lengths around the path MTU: one packet, MTU-1, MTU+1, several packets"
            }
        }
    }

    pub fn parse(name: &str) -> Option<WriteShape> {
        WriteShape::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Why this shape cannot be drawn in a pinned range of `len` bytes with this transfer
    /// unit, if it cannot.
    pub fn unavailable(self, len: u64, unit: Option<u64>) -> Option<String> {
        match self {
            WriteShape::HugePageCrossing if len <= HUGE_PAGE => Some(format!(
                "huge-page-crossing writes need a pinned range larger than 2 MiB (file_size is {len} bytes)"
            )),
            WriteShape::PageCrossing | WriteShape::MultiPage if len < 2 * PAGE => Some(format!(
                "{} writes need at least two pages (file_size is {len} bytes)",
                self.name()
            )),
            WriteShape::Packets if unit.is_none() => Some(
                "packets: this pin path's device has no transfer unit (path MTU)".into(),
            ),
            WriteShape::Packets if unit.is_some_and(|u| 4 * u + 1 > len) => Some(format!(
                "packets: the pinned range ({len} bytes) is smaller than four packets and a byte"
            )),
            _ => None,
        }
    }

    /// Draw `(offset, len)` inside `0..range` for this shape. The caller has checked
    /// [`WriteShape::unavailable`]; `unit` is the transfer unit for `packets`.
    pub fn draw(self, rng: &mut dyn RngCore, range: u64, unit: Option<u64>) -> (u64, u64) {
        let mut below = |n: u64| if n == 0 { 0 } else { rng.next_u64() % n };
        match self {
            WriteShape::Page => (below(range / PAGE) * PAGE, PAGE.min(range)),
            WriteShape::SubPage => {
                let page = below(range / PAGE) * PAGE;
                let inpage = below(PAGE);
                let room = PAGE - inpage;
                // Mostly short writes (where an offset bug shows most), sometimes long ones.
                let len = if below(2) == 0 {
                    1 + below(room.min(64))
                } else {
                    1 + below(room)
                };
                (page + inpage, len)
            }
            WriteShape::PageCrossing => {
                let boundary = (1 + below(range / PAGE - 1)) * PAGE;
                let before = 1 + below(PAGE - 1);
                let after = 1 + below(PAGE.min(range - boundary));
                (boundary - before, before + after)
            }
            WriteShape::HugePageCrossing => {
                let boundary = (1 + below((range - 1) / HUGE_PAGE)) * HUGE_PAGE;
                let before = 1 + below(2 * PAGE);
                let after = 1 + below((2 * PAGE).min(range - boundary));
                (boundary - before, before + after)
            }
            WriteShape::MultiPage => {
                let off = below(range - PAGE - 1);
                let max = range - off - PAGE;
                // Log-uniform: as many writes of a few pages as of a few hundred, and now and
                // then one up to the end of the range.
                let bits = 64 - max.leading_zeros() as u64;
                let scale = 1u64 << below(bits + 1).min(63);
                (off, PAGE + 1 + below(scale.min(max)))
            }
            WriteShape::Packets => {
                let u = unit.unwrap_or(PAGE).max(2);
                let len = match below(5) {
                    0 => u,
                    1 => u - 1,
                    2 => u + 1,
                    3 => u * (2 + below(3)),
                    _ => u * (1 + below(3)) + 1,
                };
                (below(range - len + 1), len)
            }
        }
    }
}

impl std::fmt::Display for WriteShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bytes a shaped write puts at `offset..offset+len` of file `file_id` at event `event`:
/// a different value sequence for every byte position, write and run, so a chunk found
/// elsewhere is recognisable (and where it came from is computable).
///
/// Bytes that would equal what the range held before (`before`, same length) are flipped, so
/// every byte of the write changes the range and a lost byte is always visible.
pub fn pattern(run_tag: u32, file_id: u32, event: u64, offset: u64, before: &[u8]) -> Vec<u8> {
    let key = splitmix(((run_tag as u64) << 32 | file_id as u64) ^ splitmix(event));
    let mut word = (u64::MAX, [0u8; 8]);
    before
        .iter()
        .enumerate()
        .map(|(i, &old)| {
            let x = offset + i as u64;
            if word.0 != x >> 3 {
                word = (x >> 3, splitmix(key ^ (x >> 3)).to_le_bytes());
            }
            let b = word.1[(x & 7) as usize];
            if b == old {
                b ^ 0xa5
            } else {
                b
            }
        })
        .collect()
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_shape_draws_inside_the_range_with_its_geometry() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let range = 4 << 20;
        for &s in WriteShape::ALL {
            for _ in 0..2000 {
                let (off, len) = s.draw(&mut rng, range, Some(1024));
                assert!(len >= 1 && off + len <= range, "{s}: {off}+{len}");
                let (first, last) = (off / PAGE, (off + len - 1) / PAGE);
                match s {
                    WriteShape::Page => assert!(off % PAGE == 0 && len == PAGE),
                    WriteShape::SubPage => assert_eq!(first, last, "{s}: {off}+{len}"),
                    WriteShape::PageCrossing => assert_eq!(last, first + 1, "{s}: {off}+{len}"),
                    WriteShape::HugePageCrossing => {
                        assert!(off / HUGE_PAGE < (off + len - 1) / HUGE_PAGE, "{off}+{len}")
                    }
                    WriteShape::MultiPage => assert!(len > PAGE),
                    WriteShape::Packets => assert!(
                        [1023, 1024, 1025].contains(&len) || len % 1024 <= 1,
                        "{len}"
                    ),
                }
            }
        }
    }

    #[test]
    fn odd_offsets_and_single_bytes_are_drawn() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let draws: Vec<_> = (0..2000)
            .map(|_| WriteShape::SubPage.draw(&mut rng, 1 << 20, None))
            .collect();
        assert!(draws.iter().any(|(o, _)| o % 2 == 1));
        assert!(draws.iter().any(|(_, l)| *l == 1));
    }

    #[test]
    fn shapes_a_range_cannot_hold_say_why() {
        assert!(WriteShape::HugePageCrossing
            .unavailable(2 << 20, None)
            .is_some());
        assert!(WriteShape::HugePageCrossing
            .unavailable(4 << 20, None)
            .is_none());
        assert!(WriteShape::Packets.unavailable(1 << 20, None).is_some());
        assert!(WriteShape::Packets
            .unavailable(1 << 20, Some(1024))
            .is_none());
    }

    #[test]
    fn the_pattern_differs_from_what_was_there_and_from_itself_shifted() {
        let before = vec![0u8; 4096];
        let p = pattern(1, 2, 3, 100, &before);
        assert!(p.iter().all(|b| *b != 0));
        // Written one byte further on, the data is a different sequence: a shift shows.
        let q = pattern(1, 2, 3, 101, &before);
        let same = p.iter().zip(&q).filter(|(a, b)| a == b).count();
        assert!(same < 64, "{same} of 4096 bytes coincide");
        // Same position, another write: different bytes.
        assert_ne!(p, pattern(1, 2, 4, 100, &before));
        // Position-determined: a sub-range of a write is the same bytes.
        assert_eq!(&p[10..20], &pattern(1, 2, 3, 110, &before[..10])[..]);
    }
}
