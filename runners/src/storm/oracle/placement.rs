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
//!
//! [`map`] says the same byte by byte, in runs (its own data, its data from elsewhere with
//! where that belongs, unchanged, other), for the example's history. Both label the window
//! in one linear pass: a moved chunk is found through an index of the data's 8-byte runs,
//! so a scattered write of megabytes costs what one that landed costs.

use std::collections::HashMap;
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
/// Up to this length every offset of the data is indexed, so a moved run of
/// [`MIN_SEARCH`] bytes is found; longer data is indexed every 8 bytes (a moved run is
/// then found from 15 bytes on), which keeps the index small for writes of megabytes.
const INDEX_EVERY_OFFSET: usize = 64 * 1024;

/// What a run of window bytes holds after the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// The data that belongs there (inside the target only).
    Own,
    /// Data of the write that belongs at file offset `from` (the run's first byte).
    Moved { from: u64 },
    /// What it held before the write.
    Unchanged,
    /// Something else: neither what it held nor data of the write.
    Other,
}

/// A run of the window, in file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub range: Range<u64>,
    pub held: Held,
}

const OWN: u8 = 0;
const UNCHANGED: u8 = 1;
const OTHER: u8 = 2;
const MOVED: u8 = 3;

/// Every byte of the window, labelled, with the data offset of each moved byte.
struct Labels {
    label: Vec<u8>,
    src: Vec<u32>,
}

/// Label every byte of the window in one pass: the write's own data, unchanged, moved
/// data of the write (found through an index of the data's 8-byte runs, then extended both
/// ways byte by byte) or other. Linear in the window, so a write of megabytes that the
/// device scattered is judged as fast as one that landed.
fn label(lo: usize, data: &[u8], w: &Window) -> Labels {
    let (before, after) = (w.before, w.after);
    let n = after.len();
    let hi = lo + data.len();
    let own = |k: usize| k >= lo && k < hi && after[k] == data[k - lo];
    let stride = if data.len() <= INDEX_EVERY_OFFSET {
        1
    } else {
        MIN_SEARCH
    };
    let mut index: HashMap<[u8; MIN_SEARCH], u32> = HashMap::new();
    if data.len() >= MIN_SEARCH {
        index.reserve(data.len() / stride);
        for j in (0..=data.len() - MIN_SEARCH).step_by(stride) {
            let key: [u8; MIN_SEARCH] = data[j..j + MIN_SEARCH].try_into().unwrap();
            index.entry(key).or_insert(j as u32);
        }
    }
    let mut label = vec![OTHER; n];
    let mut src = vec![u32::MAX; n];
    let mut k = 0;
    while k < n {
        if label[k] == MOVED {
            k += 1;
            continue;
        }
        if own(k) {
            label[k] = OWN;
            k += 1;
            continue;
        }
        if after[k] == before[k] {
            label[k] = UNCHANGED;
            k += 1;
            continue;
        }
        let hit = after
            .get(k..k + MIN_SEARCH)
            .and_then(|probe| index.get(probe))
            .map(|&j| j as usize);
        let Some(j) = hit else {
            k += 1;
            continue;
        };
        // Back to where this chunk starts (its first bytes may have come before an indexed
        // offset, or looked unchanged or in place by chance), then forward to where it ends.
        let (mut s, mut js) = (k, j);
        while s > 0 && js > 0 && label[s - 1] != MOVED && after[s - 1] == data[js - 1] {
            s -= 1;
            js -= 1;
        }
        let (mut e, mut je) = (k, j);
        while e < n && je < data.len() && after[e] == data[je] {
            e += 1;
            je += 1;
        }
        for (x, i) in (s..e).zip(js..) {
            label[x] = MOVED;
            src[x] = i as u32;
        }
        k = e.max(k + 1);
    }
    Labels { label, src }
}

/// Where each byte of the window is after a write of `data` to `target`: runs of its own
/// data, of its data from elsewhere (`Moved`), unchanged bytes and other bytes.
pub fn map(target: Range<u64>, data: &[u8], w: &Window) -> Vec<Segment> {
    let lo = (target.start - w.start) as usize;
    segments(w.start, &label(lo, data, w), target.start)
}

fn segments(base: u64, l: &Labels, target_start: u64) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for (k, (&lab, &src)) in l.label.iter().zip(&l.src).enumerate() {
        let at = base + k as u64;
        let held = match lab {
            OWN => Held::Own,
            UNCHANGED => Held::Unchanged,
            MOVED => Held::Moved {
                from: target_start + src as u64,
            },
            _ => Held::Other,
        };
        if let Some(last) = out.last_mut() {
            let continues = match (&last.held, &held) {
                (Held::Moved { from: a }, Held::Moved { from: b }) => {
                    *b == *a + (last.range.end - last.range.start)
                }
                (a, b) => a == b,
            };
            if continues && last.range.end == at {
                last.range.end = at + 1;
                continue;
            }
        }
        out.push(Segment {
            range: at..at + 1,
            held,
        });
    }
    out
}

/// The map in lines for a report, cut at the target's ends: every run in the target, and
/// every changed run outside it; at most `max` lines.
pub fn describe(map: &[Segment], target: &Range<u64>, max: usize) -> Vec<String> {
    let mut pieces: Vec<(Range<u64>, Held, bool)> = Vec::new();
    for s in map {
        let cuts = [s.range.start, target.start, target.end, s.range.end];
        for w in [cuts[0]..cuts[1], cuts[1]..cuts[2], cuts[2]..cuts[3]] {
            let r = w.start.max(s.range.start)..w.end.min(s.range.end);
            if r.start >= r.end {
                continue;
            }
            let held = match s.held {
                Held::Moved { from } => Held::Moved {
                    from: from + (r.start - s.range.start),
                },
                ref h => h.clone(),
            };
            let inside = r.start >= target.start && r.end <= target.end;
            if inside || held != Held::Unchanged {
                pieces.push((r, held, inside));
            }
        }
    }
    let mut lines: Vec<String> = pieces
        .iter()
        .take(max)
        .map(|(r, held, inside)| {
            let (a, b) = (r.start, r.end);
            let place = if *inside { "" } else { " (outside the target)" };
            match held {
                Held::Own => format!("{a}..{b}: its data, where it belongs"),
                Held::Moved { from } => format!(
                    "{a}..{b}{place}: its data of {from}..{} ({:+} bytes)",
                    from + (b - a),
                    a as i64 - *from as i64
                ),
                Held::Unchanged => format!("{a}..{b}: unchanged"),
                Held::Other => format!("{a}..{b}{place}: changed, but not to its data"),
            }
        })
        .collect();
    if pieces.len() > max {
        lines.push(format!("... and {} more runs", pieces.len() - max));
    }
    lines
}

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
    let labels = label(lo, data, w);
    if let Some((shift, found)) = shifted_copy(data, lo, after.len(), &labels) {
        return Placement::Misplaced {
            shift,
            found: w.start + found.start as u64..w.start + found.end as u64,
        };
    }
    // A run of the target holding data of another offset of the same write.
    let repeated = segments(w.start, &labels, target.start)
        .into_iter()
        .find_map(|s| match s.held {
            Held::Moved { from } => {
                let a = s.range.start.max(target.start);
                let b = s.range.end.min(target.end);
                (b >= a + MIN_SEARCH as u64).then(|| (a..b, from + (a - s.range.start)))
            }
            _ => None,
        });
    if let Some((at, from)) = repeated {
        return Placement::Repeated { at, from };
    }
    if matched == 0 {
        return Placement::Lost;
    }
    Placement::Torn {
        written: ranges(target.start, matches.iter().copied()),
        missing: ranges(target.start, matches.iter().map(|m| !m)),
    }
}

/// The shift at which at least 7/8 of `data` sits in the window (indices into it), if any.
fn shifted_copy(data: &[u8], lo: usize, n: usize, l: &Labels) -> Option<(i64, Range<usize>)> {
    if data.len() < MIN_SEARCH {
        return None;
    }
    let mut hits: HashMap<i64, usize> = HashMap::new();
    for (k, (&lab, &src)) in l.label.iter().zip(&l.src).enumerate() {
        if lab == MOVED {
            *hits.entry(k as i64 - (lo as i64 + src as i64)).or_default() += 1;
        }
    }
    let (shift, count) = hits.into_iter().max_by_key(|(s, c)| (*c, -s.abs()))?;
    (count * 8 >= data.len() * 7).then(|| {
        let start = (lo as i64 + shift).max(0) as usize;
        (shift, start..(start + data.len()).min(n))
    })
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

    /// A device that drops the in-page offset of every packet: each `unit`-byte packet of a
    /// write at `off` lands at the start of the page its own address is in.
    fn packets_to_page_starts(after: &mut [u8], start: u64, off: u64, data: &[u8], unit: usize) {
        for (n, chunk) in data.chunks(unit).enumerate() {
            let page = (off + (n * unit) as u64) / 4096 * 4096;
            let i = (page - start) as usize;
            after[i..i + chunk.len()].copy_from_slice(chunk);
        }
    }

    #[test]
    fn packets_landing_at_page_starts_are_mapped_packet_by_packet() {
        // 3072 bytes at in-page offset 2090 in 1024-byte packets: the first two land at the
        // start of their page, the third at the start of the next page.
        let mut p = planted(START + 2090, 3072);
        let data = p.data.clone();
        packets_to_page_starts(&mut p.after, START, p.off, &data, 1024);
        let w = Window {
            start: START,
            before: &p.before,
            after: &p.after,
        };
        let target = p.off..p.off + 3072;
        let m = map(target.clone(), &data, &w);
        let moved: Vec<_> = m
            .iter()
            .filter_map(|s| match s.held {
                Held::Moved { from } => Some((s.range.clone(), from)),
                _ => None,
            })
            .collect();
        // The second packet overwrote the first at the page start; the third sits at the
        // start of the next page, inside the target.
        assert_eq!(
            moved,
            vec![
                (START..START + 1024, p.off + 1024),
                (START + 4096..START + 5120, p.off + 2048),
            ]
        );
        let lines = describe(&m, &target, 32);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{START}..{}", START + 1024))
                    && l.contains("outside the target")),
            "{lines:?}"
        );
        // Inside the target, the third packet's data repeats where other bytes belong.
        assert_eq!(
            p.judge(),
            Placement::Repeated {
                at: START + 4096..START + 5120,
                from: p.off + 2048,
            }
        );
    }

    #[test]
    fn a_scattered_write_of_two_mebibytes_is_judged_and_mapped_chunk_by_chunk() {
        // Long writes are indexed every 8 bytes: the classifier stays linear in the window,
        // and every 1024-byte chunk the device put elsewhere is still found and named.
        let len = 2 << 20;
        let start = 0u64;
        let off = 4096 + 300;
        let n = (off as usize + len).div_ceil(4096) * 4096 + 4096;
        let before: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let lo = (off - start) as usize;
        let data = pattern(7, 1, 43, off, &before[lo..lo + len]);
        let mut after = before.clone();
        packets_to_page_starts(&mut after, start, off, &data, 1024);
        let w = Window {
            start,
            before: &before,
            after: &after,
        };
        let target = off..off + len as u64;
        let m = map(target.clone(), &data, &w);
        let moved = m
            .iter()
            .filter(|s| matches!(s.held, Held::Moved { .. }))
            .count();
        // One chunk survives per page a packet starts in (the last such packet): the write
        // touches pages 1..=513, and no packet starts in the last one.
        assert_eq!(moved, 512);
        assert!(matches!(
            classify(target, &data, &w),
            Placement::Repeated { .. }
        ));
    }

    #[test]
    fn ranges_are_shown_compactly() {
        assert_eq!(show(&[1..3, 7..8]), "1..3, 7..8");
        let many: Vec<_> = (0..6).map(|i| i * 10..i * 10 + 1).collect();
        assert!(show(&many).ends_with("and 2 more"));
    }
}
