//! Histograms as their recorded buckets only, for analysis at fleet scale.
//!
//! A [`Latency`] is an HdrHistogram: ~33,800 counters for pinstorm's bounds (1 ns to 1 h,
//! 3 significant digits), ~270 KiB allocated and zeroed for every histogram decoded, and
//! every counter walked for every merge. A run's histogram has tens to a few hundred
//! recorded buckets, and `compare` and `report` over a thousand full results decode
//! seventy thousand histograms. [`Sparse`] keeps only the recorded buckets, packed, and
//! gives the same counts, quantiles and merges as the HdrHistogram it stands for (the tests
//! below hold it to that on random and real histograms).
//!
//! It is decoded straight from the stored V2 encoding when that has pinstorm's bounds (what
//! pinstorm writes); anything else (another producer's bounds, an encoding HdrHistogram
//! would refuse) goes through [`Latency::decode`], so errors and clamping stay exactly
//! those of the full decoder.

use std::sync::OnceLock;

use super::{checked_v2, reference, Latency, V2_HEADER_LEN};

/// Where each bucket of pinstorm's histograms lies: the value HdrHistogram reports for it
/// (the highest value the bucket holds), by bucket index.
fn bucket_values() -> &'static [u64] {
    static VALUES: OnceLock<Vec<u64>> = OnceLock::new();
    VALUES.get_or_init(|| {
        let r = reference();
        // Buckets are contiguous: the next one starts one past the highest value of this.
        let mut v = 0u64;
        (0..r.distinct_values())
            .map(|_| {
                let high = r.highest_equivalent(v);
                v = high.saturating_add(1);
                high
            })
            .collect()
    })
}

/// A latency histogram as its recorded buckets, in pinstorm's bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sparse {
    /// Per recorded bucket, in ascending order: LEB128 of its index minus the previous
    /// recorded bucket's index (the first: its index), then LEB128 of its count (never 0).
    packed: Vec<u8>,
    count: u64,
    clamped: u64,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint this module wrote: its value and length.
fn get_varint(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    unreachable!("a packed histogram ends inside a varint")
}

/// Builds a [`Sparse`] from buckets in ascending index order.
#[derive(Default)]
struct Packer {
    out: Sparse,
    next: usize,
}

impl Packer {
    fn push(&mut self, index: usize, count: u64) {
        debug_assert!(count > 0 && index >= self.next);
        put_varint(&mut self.out.packed, (index - self.next) as u64);
        put_varint(&mut self.out.packed, count);
        self.out.count = self.out.count.saturating_add(count);
        self.next = index;
    }

    fn finish(mut self, clamped: u64) -> Sparse {
        self.out.packed.shrink_to_fit();
        self.out.clamped = clamped;
        self.out
    }
}

/// HdrHistogram's varint (LEB128 of at most 9 bytes, the ninth taken whole) at the start of
/// `b`, and its length; `None` when `b` ends inside it.
fn v2_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(9).enumerate() {
        if i == 8 {
            return Some((v | u64::from(*byte) << 56, 9));
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The buckets of a checked V2 encoding with exactly pinstorm's bounds, read the way
/// HdrHistogram's deserializer reads them. `None` for anything it would read differently
/// or refuse (other bounds, a normalizing offset, a count past the last bucket, a payload
/// ending inside a varint): the caller then asks the deserializer itself.
fn own_bounds(v2: &[u8]) -> Option<Sparse> {
    let r = reference();
    let len = u32::from_be_bytes(v2.get(4..8)?.try_into().ok()?) as usize;
    let offset = u32::from_be_bytes(v2.get(8..12)?.try_into().ok()?);
    let digits = u32::from_be_bytes(v2.get(12..16)?.try_into().ok()?);
    let (low, high) = (be_u64(v2, 16)?, be_u64(v2, 24)?);
    let ratio = f64::from_bits(be_u64(v2, 32)?);
    if offset != 0
        || ratio != 1.0
        || (low, high, digits) != (r.low(), r.high(), u32::from(r.sigfig()))
    {
        return None;
    }
    let buckets = bucket_values().len();
    let mut rest = v2.get(V2_HEADER_LEN..V2_HEADER_LEN.checked_add(len)?)?;
    let mut index = 0usize;
    let mut out = Packer::default();
    while !rest.is_empty() {
        let (zz, used) = v2_varint(rest)?;
        rest = &rest[used..];
        let n = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
        if n < 0 {
            // A run of empty buckets.
            index = index.checked_add(usize::try_from(n.unsigned_abs()).ok()?)?;
        } else {
            if n > 0 {
                if index >= buckets {
                    return None;
                }
                out.push(index, n as u64);
            }
            index = index.checked_add(1)?;
        }
    }
    Some(out.finish(0))
}

impl Sparse {
    /// Decode a stored histogram, as [`Latency::decode`] does (same errors, same clamping
    /// of other producers' samples into pinstorm's bounds), without making the full one
    /// when the encoding has pinstorm's bounds.
    pub fn decode(s: &str) -> anyhow::Result<Sparse> {
        let v2 = checked_v2(s)?;
        match own_bounds(&v2) {
            Some(h) => Ok(h),
            None => Latency::from_v2(&v2).map(|l| Sparse::of(&l)),
        }
    }

    /// The recorded buckets of a full histogram.
    pub fn of(l: &Latency) -> Sparse {
        let values = bucket_values();
        let mut out = Packer::default();
        for v in l.histogram().iter_recorded() {
            let index = values.partition_point(|x| *x < v.value_iterated_to());
            out.push(index, v.count_at_value());
        }
        out.finish(l.clamped())
    }

    /// The full histogram with the same buckets (for exporters and tests; analysis at
    /// scale never needs it).
    pub fn to_latency(&self) -> Latency {
        let mut l = Latency::new();
        for (value, count) in self.iter() {
            l.h.saturating_record_n(value, count);
        }
        l.clamped = self.clamped;
        l
    }

    /// All of `hists` in one, as merging their full histograms would give (counts add,
    /// saturating).
    pub fn sum<'a>(hists: impl IntoIterator<Item = &'a Sparse>) -> Sparse {
        let mut hists = hists.into_iter().peekable();
        let Some(first) = hists.next() else {
            return Sparse::default();
        };
        if hists.peek().is_none() {
            return first.clone();
        }
        // One pass over each histogram's buckets into dense counters, made once per sum
        // rather than once per histogram.
        let mut dense = vec![0u64; bucket_values().len()];
        let (mut lo, mut hi) = (usize::MAX, 0);
        let mut clamped = 0u64;
        for h in std::iter::once(first).chain(hists) {
            for (i, c) in h.indexed() {
                dense[i] = dense[i].saturating_add(c);
                lo = lo.min(i);
                hi = hi.max(i);
            }
            clamped = clamped.saturating_add(h.clamped);
        }
        let mut out = Packer::default();
        if lo <= hi {
            for (i, c) in dense[lo..=hi].iter().enumerate() {
                if *c > 0 {
                    out.push(lo + i, *c);
                }
            }
        }
        out.finish(clamped)
    }

    /// Samples in all buckets.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Samples beyond one hour, clamped to it (other producers' histograms only).
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// Recorded buckets, ascending, as (bucket index, count).
    fn indexed(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let mut rest = self.packed.as_slice();
        let mut index = 0usize;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (delta, a) = get_varint(rest);
            let (count, b) = get_varint(&rest[a..]);
            rest = &rest[a + b..];
            index += delta as usize;
            Some((index, count))
        })
    }

    /// Recorded buckets, ascending, as (value, count): the value HdrHistogram's
    /// `iter_recorded` reports (the highest value in the bucket).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let values = bucket_values();
        self.indexed().map(move |(i, c)| (values[i], c))
    }

    /// HdrHistogram's `value_at_quantile`, step for step: the highest value of the bucket
    /// where the count reaches `q` of the samples (at least one sample in), the lowest for
    /// `q == 0`, 0 when it is never reached.
    pub fn value_at_quantile(&self, quantile: f64) -> u64 {
        let quantile = if quantile > 1.0 { 1.0 } else { quantile };
        let fractional_count = quantile * self.count as f64;
        let target = (fractional_count.ceil() as u64).max(1);
        let mut total = 0u64;
        for (value, count) in self.iter() {
            total = total.saturating_add(count);
            if total >= target {
                return if quantile == 0.0 {
                    reference().lowest_equivalent(value)
                } else {
                    value
                };
            }
        }
        0
    }
}

#[cfg(test)]
mod tests;
