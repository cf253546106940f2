//! Latency histograms: recorded in nanoseconds with HdrHistogram (3 significant digits),
//! summarised in one place, and stored losslessly in results as HdrHistogram's V2
//! compressed serialization in base64 (readable by every HdrHistogram implementation).
//!
//! A stored histogram is input like any other: it may come from another HdrHistogram
//! producer (other bounds or precision) or be edited by hand. Decoding checks the encoding
//! before HdrHistogram's deserializer sees it (that one trusts its input: a length field
//! makes it allocate up to 4 GiB, and one varint makes it overflow), then records the
//! samples into pinstorm's own bounds, so every [`Latency`] can be merged with every other.

use std::io::Read;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

mod sparse;
pub use sparse::Sparse;

/// Highest value a histogram tracks: one hour in nanoseconds. Larger values are clamped
/// (and counted in `Latency::clamped`).
const MAX_NS: u64 = 3_600_000_000_000;

/// The most samples a stored histogram may hold: 2^48, days of a billion samples a second.
/// Anything beyond is an edited file, and sums of counts must stay far from `u64::MAX` when
/// thousands of runs are merged.
pub const MAX_SAMPLES: u64 = 1 << 48;

/// The most bytes a stored histogram may decompress to. pinstorm's own are a few KiB; a
/// 5-digit histogram over the whole `u64` range with every bucket set would be ~57 MiB.
const MAX_DECODED_BYTES: u64 = 64 << 20;

/// HdrHistogram's V2 cookies (with the word size nibble its implementations write).
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;
/// Cookie, payload length, normalizing offset, digits, low, high, integer-to-double ratio.
const V2_HEADER_LEN: usize = 40;

#[derive(Clone, Debug)]
pub struct Latency {
    h: Histogram<u64>,
    clamped: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

/// The summary numbers every latency row carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    pub stdev_ns: f64,
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            h: Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds"),
            clamped: 0,
        }
    }

    pub fn record(&mut self, ns: u64) {
        let v = ns.clamp(1, MAX_NS);
        if v != ns && ns > MAX_NS {
            self.clamped += 1;
        }
        self.h.record(v).expect("value within bounds");
    }

    pub fn merge(&mut self, other: &Latency) {
        // Every Latency has the same bounds (decode records foreign ones into them), so
        // `add` does not fail; were it to, the samples are recorded one value at a time.
        if self.h.add(&other.h).is_err() {
            for v in other.h.iter_recorded() {
                self.h.saturating_record_n(
                    v.value_iterated_to().clamp(1, MAX_NS),
                    v.count_at_value(),
                );
            }
        }
        self.clamped = self.clamped.saturating_add(other.clamped);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.h
    }

    pub fn stats(&self) -> Stats {
        let h = &self.h;
        Stats {
            count: h.len(),
            min_ns: if h.is_empty() { 0 } else { h.min() },
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            mean_ns: h.mean(),
            stdev_ns: h.stdev(),
        }
    }

    /// V2 compressed serialization, base64.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&self.h, &mut buf)
            .expect("serializing to memory");
        base64::engine::general_purpose::STANDARD.encode(buf)
    }

    /// Decode a stored histogram: HdrHistogram V2, compressed or not, in base64, from any
    /// producer. Samples outside pinstorm's bounds are clamped into them (and counted in
    /// `clamped`). The error says what is wrong with the encoding.
    pub fn decode(s: &str) -> anyhow::Result<Latency> {
        Latency::from_v2(&checked_v2(s)?)
    }

    /// The histogram of a V2 encoding that passed [`checked_v2`].
    fn from_v2(v2: &[u8]) -> anyhow::Result<Latency> {
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &v2[..])
            .map_err(|e| anyhow::anyhow!("not a valid HdrHistogram: {e}"))?;
        // Bounds checked against a histogram made once: a fresh `Latency` here would
        // allocate and zero its ~270 KiB of counts only to be dropped, and analysis at
        // fleet scale decodes hundreds of thousands of histograms.
        let r = reference();
        if (h.low(), h.high(), h.sigfig()) == (r.low(), r.high(), r.sigfig()) {
            return Ok(Latency { h, clamped: 0 });
        }
        let mut out = Latency::new();
        // Another producer's bounds: each bucket's samples go where its highest value lands
        // here (HdrHistogram reports a bucket by its highest value too).
        for v in h.iter_recorded() {
            let value = v.value_iterated_to();
            let n = v.count_at_value();
            if value > MAX_NS {
                out.clamped = out.clamped.saturating_add(n);
            }
            out.h.saturating_record_n(value.clamp(1, MAX_NS), n);
        }
        Ok(out)
    }
}

/// An empty histogram of pinstorm's bounds, made once: what bounds and bucket arithmetic
/// are checked against. A fresh `Latency` for that would allocate and zero its ~270 KiB of
/// counts only to be dropped, and analysis at fleet scale decodes hundreds of thousands of
/// histograms.
fn reference() -> &'static Histogram<u64> {
    static REFERENCE: OnceLock<Histogram<u64>> = OnceLock::new();
    REFERENCE.get_or_init(|| Latency::new().h)
}

/// The V2 encoding of a stored histogram (base64 of V2 or V2-compressed), with everything
/// HdrHistogram's deserializer takes on trust checked. The error says what is wrong.
fn checked_v2(s: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .context("not base64")?;
    let v2 = uncompressed_v2(&bytes)?;
    check_v2(&v2)?;
    Ok(v2)
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The V2 encoding of a V2 or V2-compressed histogram, inflated at most to
/// [`MAX_DECODED_BYTES`].
fn uncompressed_v2(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let Some(cookie) = be_u32(bytes, 0) else {
        bail!("too short to be an HdrHistogram ({} bytes)", bytes.len());
    };
    match cookie {
        V2_COOKIE => Ok(bytes.to_vec()),
        V2_COMPRESSED_COOKIE => {
            let Some(len) = be_u32(bytes, 4) else {
                bail!("truncated HdrHistogram header");
            };
            let Some(deflated) = bytes.get(8..8 + len as usize) else {
                bail!(
                    "truncated: the header says {len} compressed bytes, {} are there",
                    bytes.len().saturating_sub(8)
                );
            };
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(deflated)
                .take(MAX_DECODED_BYTES + 1)
                .read_to_end(&mut out)
                .context("the compressed histogram does not inflate")?;
            if out.len() as u64 > MAX_DECODED_BYTES {
                bail!("inflates to more than {} MiB", MAX_DECODED_BYTES >> 20);
            }
            if be_u32(&out, 0) != Some(V2_COOKIE) {
                bail!("the compressed data is not an HdrHistogram V2 encoding");
            }
            Ok(out)
        }
        c => bail!("not an HdrHistogram V2 encoding (cookie {c:#010x})"),
    }
}

/// Check what HdrHistogram's deserializer takes on trust: the payload length against the
/// bytes there, and every count (a varint of `i64::MIN` overflows its negation; counts that
/// add up past [`MAX_SAMPLES`] are not a measurement).
fn check_v2(v2: &[u8]) -> anyhow::Result<()> {
    let Some(len) = be_u32(v2, 4) else {
        bail!("truncated HdrHistogram header");
    };
    let Some(payload) = v2.get(V2_HEADER_LEN..) else {
        bail!("truncated HdrHistogram header");
    };
    if len as usize > payload.len() {
        bail!(
            "truncated: the header says {len} bytes of counts, {} are there",
            payload.len()
        );
    }
    let mut rest = &payload[..len as usize];
    let mut total: u64 = 0;
    while !rest.is_empty() {
        // LEB128 of at most 9 bytes, the ninth taken whole, then zig-zag, as HdrHistogram
        // writes them.
        let mut value: u64 = 0;
        let mut used = 0;
        for (i, b) in rest.iter().take(9).enumerate() {
            used = i + 1;
            if i == 8 {
                value |= u64::from(*b) << 56;
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        rest = &rest[used..];
        let n = ((value >> 1) as i64) ^ -((value & 1) as i64);
        if n == i64::MIN {
            bail!("a run of zero counts is longer than any histogram");
        }
        if n > 0 {
            total = total
                .checked_add(n as u64)
                .filter(|t| *t <= MAX_SAMPLES)
                .context("holds more than 2^48 samples (counts edited by hand?)")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_losslessly() {
        let mut l = Latency::new();
        for v in [100, 200, 300, 1_000_000, 5] {
            l.record(v);
        }
        let back = Latency::decode(&l.encode()).unwrap();
        assert_eq!(back.histogram(), l.histogram());
        assert_eq!(back.stats(), l.stats());
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn v2(h: &Histogram<u64>) -> Vec<u8> {
        let mut buf = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(h, &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn histograms_of_other_producers_decode_into_our_bounds_and_merge() {
        let mut other = Histogram::<u64>::new_with_bounds(1, u64::MAX, 2).unwrap();
        other.record_n(1_000, 10).unwrap();
        other.record_n(2 * MAX_NS, 2).unwrap();
        let mut buf = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&other, &mut buf)
            .unwrap();
        let l = Latency::decode(&b64(&buf)).unwrap();
        assert_eq!(l.count(), 12);
        assert_eq!(
            l.clamped(),
            2,
            "samples past one hour are clamped and counted"
        );
        assert_eq!(
            l.stats().max_ns,
            Latency::new().h.highest_equivalent(MAX_NS)
        );
        let mut ours = Latency::new();
        ours.record(500);
        ours.merge(&l);
        assert_eq!(ours.count(), 13);
        // The uncompressed V2 encoding is read too.
        assert_eq!(Latency::decode(&b64(&v2(&other))).unwrap().count(), 12);
    }

    /// An uncompressed V2 histogram of our bounds whose counts are `payload`.
    fn with_payload(payload: &[u8]) -> String {
        let mut v = v2(&Latency::new().h);
        v.truncate(V2_HEADER_LEN);
        v[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        b64(&v)
    }

    #[test]
    fn edited_histograms_are_refused_with_what_is_wrong() {
        let good = {
            let mut l = Latency::new();
            l.record(100);
            l.encode()
        };
        for (text, why) in [
            ("!!!!".to_string(), "not base64"),
            (b64(&[1, 2]), "too short"),
            (b64(&[0, 0, 0, 0, 0, 0, 0, 0]), "not an HdrHistogram V2"),
            (good[..good.len() - 8].to_string() + "AAAAAAAA", "inflate"),
            // A run of zero counts of i64::MIN: HdrHistogram's negation overflows.
            (with_payload(&[0xff; 9]), "zero counts is longer"),
            // 2^60 samples in one bucket.
            (
                with_payload(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]),
                "2^48 samples",
            ),
            // A length that would make HdrHistogram allocate 4 GiB.
            (
                {
                    let mut v = base64::engine::general_purpose::STANDARD
                        .decode(with_payload(&[2]))
                        .unwrap();
                    v[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
                    b64(&v)
                },
                "truncated",
            ),
            // More counts than the bounds have buckets.
            (with_payload(&[2; 40_000]), "not a valid HdrHistogram"),
        ] {
            let e = format!("{:#}", Latency::decode(&text).unwrap_err());
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn stats_follow_the_recorded_values() {
        let mut l = Latency::new();
        for v in 1..=1000u64 {
            l.record(v * 1000);
        }
        let s = l.stats();
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1%.
        assert!(
            (s.p50_ns as f64 - 500_000.0).abs() / 500_000.0 < 0.002,
            "{s:?}"
        );
        assert!(
            (s.p99_ns as f64 - 990_000.0).abs() / 990_000.0 < 0.002,
            "{s:?}"
        );
        assert!(s.min_ns <= 1000 && s.max_ns >= 999_000);
    }
}
