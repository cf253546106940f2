//! Where every byte of a shaped device write went: the byte-exact check behind the
//! misplaced, torn and spill oracles (and lost writes of any shape).
//!
//! The caller reads a window around the write's target before and after it (through the file
//! with `pread`, never through the CPU mapping, or through the device for private mappings),
//! with no layout operation running on the file in between. Every byte of the written data
//! differs from what its target held before ([`pinstorm_workloads::shape::pattern`]), and the
//! data at one offset is a different sequence from the data at any other, so:
//!
//! - **exact**: the target holds the data and nothing else in the window changed;
//! - **spill**: the target holds the data, and bytes outside it changed too;
//! - **misplaced**: the data (at least 7/8 of it) is in the window at another offset;
//! - **repeated**: part of the target holds a chunk of the data that belongs elsewhere in it;
//! - **torn**: some bytes of the target hold the data, the rest do not;
//! - **lost**: no byte of the target holds the data, and it is nowhere else in the window.

use std::ops::Range;

/// What a shaped write did, with the byte ranges (file offsets) that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    Exact,
    Spill {
        changed: Vec<Range<u64>>,
    },
    Misplaced {
        /// Where the data is, minus where it belongs.
        shift: i64,
        found: Range<u64>,
    },
    Repeated {
        /// The target bytes that hold data of another part of the write...
        at: Range<u64>,
        /// ...the data that belongs at this offset.
        from: u64,
    },
    Torn {
        written: Vec<Range<u64>>,
        missing: Vec<Range<u64>>,
    },
    Lost,
}

/// A window of the file around a write, read before and after it.
pub struct Window<'a> {
    /// File offset of `before[0]` and `after[0]`.
    pub start: u64,
    pub before: &'a [u8],
    pub after: &'a [u8],
}

/// The shortest data a shifted copy is looked for: shorter runs occur by chance.
const MIN_SEARCH: usize = 8;

/// Judge a write of `data` to file offsets `target` (inside the window).
pub fn classify(target: Range<u64>, data: &[u8], w: &Window) -> Placement {
    debug_assert_eq!(w.before.len(), w.after.len());
    debug_assert_eq!((target.end - target.start) as usize, data.len());
    let lo = (target.start - w.start) as usize;
    let hi = lo + data.len();
    let after = w.after;
    // The common case, in three comparisons of whole slices.
    if after[lo..hi] == *data && after[..lo] == w.before[..lo] && after[hi..] == w.before[hi..] {
        return Placement::Exact;
    }
    let matches: Vec<bool> = (lo..hi).map(|i| after[i] == data[i - lo]).collect();
    let matched = matches.iter().filter(|m| **m).count();
    if matched == data.len() {
        let changed = ranges(
            w.start,
            (0..after.len()).map(|i| (i < lo || i >= hi) && after[i] != w.before[i]),
        );
        return if changed.is_empty() {
            Placement::Exact
        } else {
            Placement::Spill { changed }
        };
    }
    if let Some((shift, found)) = shifted_copy(data, lo, after) {
        return Placement::Misplaced {
            shift,
            found: w.start + found.start as u64..w.start + found.end as u64,
        };
    }
    if let Some((at, from)) = repeated_chunk(data, lo, after, &matches) {
        return Placement::Repeated {
            at: w.start + at.start as u64..w.start + at.end as u64,
            from: target.start + from as u64,
        };
    }
    if matched == 0 {
        return Placement::Lost;
    }
    Placement::Torn {
        written: ranges(target.start, matches.iter().copied()),
        missing: ranges(target.start, matches.iter().map(|m| !m)),
    }
}

/// The shift at which at least 7/8 of `data` sits in `after` (indices into `after`), if any.
fn shifted_copy(data: &[u8], lo: usize, after: &[u8]) -> Option<(i64, Range<usize>)> {
    if data.len() < MIN_SEARCH {
        return None;
    }
    // Anchor on a few places of the data, so a copy that is itself torn is still found.
    let anchors = [0, data.len() / 2, data.len() - MIN_SEARCH];
    let mut best: Option<(usize, i64)> = None;
    for a in anchors {
        let needle = &data[a..a + MIN_SEARCH];
        for (p, win) in after.windows(MIN_SEARCH).enumerate() {
            if win != needle {
                continue;
            }
            let shift = p as i64 - (lo + a) as i64;
            if shift == 0 {
                continue;
            }
            let hits = data
                .iter()
                .enumerate()
                .filter(|(i, b)| {
                    let j = (lo + i) as i64 + shift;
                    j >= 0 && (j as usize) < after.len() && after[j as usize] == **b
                })
                .count();
            if hits * 8 >= data.len() * 7 && best.is_none_or(|(h, _)| hits > h) {
                best = Some((hits, shift));
            }
        }
    }
    best.map(|(_, shift)| {
        let start = (lo as i64 + shift).max(0) as usize;
        (shift, start..(start + data.len()).min(after.len()))
    })
}

/// A run of at least [`MIN_SEARCH`] target bytes that do not hold their own data but hold
/// the data of another offset of the same write: `(the run in after, offset into data)`.
fn repeated_chunk(
    data: &[u8],
    lo: usize,
    after: &[u8],
    matches: &[bool],
) -> Option<(Range<usize>, usize)> {
    let mut i = 0;
    while i + MIN_SEARCH <= matches.len() {
        if matches[i] {
            i += 1;
            continue;
        }
        let probe = &after[lo + i..lo + i + MIN_SEARCH];
        if let Some(from) = data.windows(MIN_SEARCH).position(|w| w == probe) {
            if from != i {
                let mut end = i + MIN_SEARCH;
                while end < matches.len()
                    && from + (end - i) < data.len()
                    && after[lo + end] == data[from + (end - i)]
                {
                    end += 1;
                }
                return Some((lo + i..lo + end, from));
            }
        }
        i += 1;
    }
    None
}

/// The runs where `flags` is true, as offsets from `base`.
fn ranges(base: u64, flags: impl Iterator<Item = bool>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for (i, f) in flags.enumerate() {
        if !f {
            continue;
        }
        let x = base + i as u64;
        match out.last_mut() {
            Some(r) if r.end == x => r.end = x + 1,
            _ => out.push(x..x + 1),
        }
    }
    out
}

/// Ranges in words: `100..104, 300..301`.
pub fn show(ranges: &[Range<u64>]) -> String {
    let shown: Vec<String> = ranges
        .iter()
        .take(4)
        .map(|r| format!("{}..{}", r.start, r.end))
        .collect();
    let more = ranges.len().saturating_sub(4);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one range is what these writes change
mod tests {
    use super::*;
    use pinstorm_workloads::shape::pattern;

    /// A 3-page window at file offset 8192 holding old data, and a write of `len` bytes at
    /// `off` (a file offset inside it).
    struct Planted {
        before: Vec<u8>,
        after: Vec<u8>,
        data: Vec<u8>,
        off: u64,
    }

    const START: u64 = 8192;

    fn planted(off: u64, len: usize) -> Planted {
        let before: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
        let lo = (off - START) as usize;
        let data = pattern(7, 1, 42, off, &before[lo..lo + len]);
        Planted {
            after: before.clone(),
            before,
            data,
            off,
        }
    }

    impl Planted {
        /// The device puts `data[from..to]` at file offset `at`.
        fn put(&mut self, at: u64, from: usize, to: usize) {
            let i = (at - START) as usize;
            self.after[i..i + to - from].copy_from_slice(&self.data[from..to]);
        }
        fn judge(&self) -> Placement {
            let w = Window {
                start: START,
                before: &self.before,
                after: &self.after,
            };
            classify(self.off..self.off + self.data.len() as u64, &self.data, &w)
        }
    }

    #[test]
    fn a_write_exactly_where_it_belongs_is_exact() {
        let mut p = planted(START + 4096 + 77, 333);
        p.put(p.off, 0, 333);
        assert_eq!(p.judge(), Placement::Exact);
    }

    #[test]
    fn a_write_shifted_by_its_in_page_offset_is_misplaced_with_the_shift() {
        // The device lost the in-page offset: the data landed at the start of the page.
        let mut p = planted(START + 4096 + 77, 333);
        p.put(START + 4096, 0, 333);
        assert_eq!(
            p.judge(),
            Placement::Misplaced {
                shift: -77,
                found: START + 4096..START + 4096 + 333
            }
        );
    }

    #[test]
    fn one_byte_past_the_end_is_a_spill_naming_that_byte() {
        let mut p = planted(START + 4096 + 77, 333);
        p.put(p.off, 0, 333);
        let past = (p.off + 333 - START) as usize;
        p.after[past] ^= 0xff;
        assert_eq!(
            p.judge(),
            Placement::Spill {
                changed: vec![p.off + 333..p.off + 334]
            }
        );
    }

    #[test]
    fn a_write_cut_short_is_torn_with_the_written_and_missing_ranges() {
        let mut p = planted(START + 4000, 200); // crosses the page boundary at START+4096
        p.put(p.off, 0, 96);
        assert_eq!(
            p.judge(),
            Placement::Torn {
                written: vec![START + 4000..START + 4096],
                missing: vec![START + 4096..START + 4200],
            }
        );
    }

    #[test]
    fn a_chunk_written_twice_is_repeated_naming_where_it_belongs() {
        // A transfer that restarted: the first 64 bytes again where bytes 128.. belong.
        let mut p = planted(START + 100, 256);
        p.put(p.off, 0, 128);
        p.put(p.off + 128, 0, 64);
        p.put(p.off + 192, 192, 256);
        assert_eq!(
            p.judge(),
            Placement::Repeated {
                at: p.off + 128..p.off + 192,
                from: p.off,
            }
        );
    }

    #[test]
    fn a_write_that_never_arrived_is_lost_whatever_its_length() {
        for len in [1, 3, 64, 4096] {
            let p = planted(START + 4096, len);
            assert_eq!(p.judge(), Placement::Lost, "{len} bytes");
        }
    }

    #[test]
    fn a_single_byte_is_judged_exactly() {
        let mut p = planted(START + 5, 1);
        assert_eq!(p.judge(), Placement::Lost);
        p.put(p.off, 0, 1);
        assert_eq!(p.judge(), Placement::Exact);
    }

    #[test]
    fn ranges_are_shown_compactly() {
        assert_eq!(show(&[1..3, 7..8]), "1..3, 7..8");
        let many: Vec<_> = (0..6).map(|i| i * 10..i * 10 + 1).collect();
        assert!(show(&many).ends_with("and 2 more"));
    }
}
