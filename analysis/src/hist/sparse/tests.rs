//! The sparse form is held to the full HdrHistogram it stands for: same buckets, counts,
//! quantiles (HdrHistogram's and the ranks comparisons bootstrap from), merges, and the
//! same errors for the same bad input, over random histograms and stored ones of a real run.

use base64::Engine;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;

use super::*;
use crate::hist::MAX_NS;
use crate::stats::Ranked;

/// splitmix64, so every case can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Log-uniform in [1, 2^bits).
    fn log_uniform(&mut self, bits: u32) -> u64 {
        let b = self.below(u64::from(bits)) as u32;
        (1u64 << b) + self.below(1u64 << b)
    }
}

/// A histogram of one of several shapes: a tight cluster (a benchmark cell), a wide
/// log-uniform spread reaching past one hour (clamped), a few values recorded many times,
/// or nothing at all.
fn random_latency(rng: &mut Rng) -> Latency {
    let mut l = Latency::new();
    let samples = rng.below(4000);
    match rng.below(4) {
        0 => {
            let centre = rng.log_uniform(40);
            let width = centre / (1 + rng.below(50)) + 1;
            for _ in 0..samples {
                l.record(centre + rng.below(width));
            }
        }
        1 => {
            for _ in 0..samples {
                l.record(rng.log_uniform(44));
            }
        }
        2 => {
            for _ in 0..1 + rng.below(6) {
                let v = rng.log_uniform(42);
                for _ in 0..1 + rng.below(500) {
                    l.record(v);
                }
            }
        }
        _ => {}
    }
    l
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn uncompressed(h: &Histogram<u64>) -> Vec<u8> {
    let mut buf = Vec::new();
    V2Serializer::new().serialize(h, &mut buf).unwrap();
    buf
}

const QUANTILES: [f64; 12] = [
    0.0, 1e-9, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0, 1.5, -0.5,
];

/// Everything analysis reads of a histogram, from both forms.
fn assert_same(s: &Sparse, l: &Latency, what: &str) {
    let h = l.histogram();
    let full: Vec<(u64, u64)> = h
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    assert_eq!(s.iter().collect::<Vec<_>>(), full, "{what}: buckets");
    assert_eq!(s.count(), h.len(), "{what}: count");
    assert_eq!(s.clamped(), l.clamped(), "{what}: clamped");
    // Points of the percentile curves `plot` draws.
    let curve = (0..=250)
        .step_by(10)
        .map(|i| 1.0 - 10f64.powf(-(i as f64) * 0.02));
    for q in QUANTILES.into_iter().chain(curve) {
        assert_eq!(
            s.value_at_quantile(q),
            h.value_at_quantile(q),
            "{what}: quantile {q}"
        );
    }
    if !h.is_empty() {
        let (a, b) = (Ranked::from_sparse(s), Ranked::from_histogram(h));
        assert_eq!(a.len(), b.len(), "{what}: ranks");
        for q in [0.5, 0.99] {
            assert_eq!(a.quantile(q), b.quantile(q), "{what}: ranked {q}");
            assert_eq!(
                a.bootstrap_quantile(q, 50, 7),
                b.bootstrap_quantile(q, 50, 7),
                "{what}: bootstrap {q}"
            );
        }
    }
}

#[test]
fn sparse_decoding_gives_the_buckets_quantiles_and_ranks_of_the_full_histogram() {
    let mut rng = Rng(1);
    for case in 0..200 {
        let l = random_latency(&mut rng);
        let encoded = if case % 2 == 0 {
            l.encode()
        } else {
            b64(&uncompressed(l.histogram()))
        };
        let full = Latency::decode(&encoded).unwrap();
        let s = Sparse::decode(&encoded).unwrap();
        let v2 = checked_v2(&encoded).unwrap();
        assert!(
            own_bounds(&v2).is_some(),
            "case {case}: pinstorm's own histograms are read without the full decoder"
        );
        assert_same(&s, &full, &format!("case {case}"));
        assert_eq!(
            s,
            Sparse::of(&full),
            "case {case}: decoded as its full form"
        );
        assert_eq!(Sparse::of(&s.to_latency()), s, "case {case}: round trip");
    }
}

#[test]
fn sparse_sums_are_the_merges_of_the_full_histograms() {
    let mut rng = Rng(2);
    for case in 0..80 {
        let parts: Vec<Latency> = (0..1 + rng.below(8))
            .map(|_| random_latency(&mut rng))
            .collect();
        let mut merged = Latency::new();
        for p in &parts {
            merged.merge(p);
        }
        let sparse: Vec<Sparse> = parts.iter().map(Sparse::of).collect();
        assert_same(&Sparse::sum(&sparse), &merged, &format!("case {case}"));
    }
    assert_eq!(Sparse::sum([]), Sparse::default());
    assert!(Sparse::sum([]).is_empty());
}

/// Stored histograms of a real `pinstorm run default` (run 20261201T024158.540Z-d610,
/// kernel 6.18.44): the smallest, a middling and the largest of its 70, as stored.
const REAL: [&str; 3] = [
    // bench io_uring tmpfs 4K unregister
    "HISTFAAAAEt4nAFAAL//HISTEwAAABgAAAAAAAAAAwAAAAAAAAABAAADRjC4oAA/8AAAAAAAAPsHHrABEg1ImBQPcsgGfA8kDwIlAu0EAhBhCnA=",
    // bench io_uring anon 64M register
    "HISTFAAAAJR4nC2LIRLCUAxE0/fDb0k/FXSmAphiqMcgGRwGgeY+3ACB5QjMYPAcB8MRyLSNyO4mb1fXWy0idxkmjJq5PW7fDzn8hsPnmZFTM9NFu2nbprJYxESFS1QxChQEXJJW1lhMmsyIeI7iEAa+nVAlOKsSA+76GkzVbQ4Tz9IDgbWW7OhYUvrrBXsunDh77PjO+QN4Ngzn",
    // storm io_uring memfd shared: registrations during the storm
    "HISTFAAAAdp4nC2RMWsUURSF3ztzd2dmZ2c3s5NRQ7JIEHdZjCYhiIhMoiwxpEgVJIiFNmIlYmWjhSBYiIgEKxtFLFKkt/EHWFtaWPgH/AOBfG82u7x575177j3n3rf05rB0Ti/d7Bed7Z7j3bUfX9zW/xlw9MhkHSczObm2uLnEnHVYSSKXJL1urze4tjJau725OVoZzI8uLJ2b67Xn5pPuQOp2EjPXtrZJFMksUmS5hlR7plhvvVra0BWCUVDIdZNvDBhpm+WUERF4LCutUh8g1SSYASJSqYad635gFlayHeiS7qiQsz198roF8Z3XOgqrUJf5l9rVVV2GW1JjQ0dB5ECLOvH6I/Z/Hvlv0vlG8LVvbOVkBnWcX0RiXVO0t7QgjFlwPGQdRzr00B5j8jrapfY0Dn2WZAbXKR4WCG+TfEPHHqDAboWdXF+9yHuhj5QwfMTSDpktPeS4g9hznNf67rnG8Kco1nhcbioUWoU0hNTnNgbtw4n0lBIT3dN7D1DoFeZTPEwp0WcOkzCeSTPvfVwMm8opj1KTV4M+0GeP14xxpLMJZDRSCV8t6qltobEyPJPj2GpMtSQ3C8Onj3GDh9lnnCr98pA+hHb39dOju6gnws+ufnv9TXmOU+DEN+c=",
];

#[test]
fn stored_histograms_of_a_real_run_read_the_same_sparse_and_in_full() {
    let full: Vec<Latency> = REAL.iter().map(|s| Latency::decode(s).unwrap()).collect();
    let sparse: Vec<Sparse> = REAL.iter().map(|s| Sparse::decode(s).unwrap()).collect();
    for (i, (s, l)) in sparse.iter().zip(&full).enumerate() {
        assert!(s.count() > 0);
        assert!(own_bounds(&checked_v2(REAL[i]).unwrap()).is_some());
        assert_same(s, l, &format!("real histogram {i}"));
    }
    // A thousand runs of each, as `compare` pools them.
    let mut merged = Latency::new();
    let mut many = Vec::new();
    for _ in 0..1000 {
        for (s, l) in sparse.iter().zip(&full) {
            merged.merge(l);
            many.push(s);
        }
    }
    assert_same(&Sparse::sum(many), &merged, "1000 copies merged");
}

#[test]
fn other_producers_histograms_are_clamped_into_our_bounds_as_in_full() {
    let mut rng = Rng(3);
    for (low, high, digits) in [(1, u64::MAX, 2), (1000, 1 << 50, 5), (1, MAX_NS, 2)] {
        let mut other = Histogram::<u64>::new_with_bounds(low, high, digits).unwrap();
        for _ in 0..2000 {
            other.record(rng.log_uniform(50).clamp(low, high)).unwrap();
        }
        let encoded = b64(&uncompressed(&other));
        let full = Latency::decode(&encoded).unwrap();
        let s = Sparse::decode(&encoded).unwrap();
        assert!(own_bounds(&checked_v2(&encoded).unwrap()).is_none());
        assert_same(&s, &full, &format!("bounds {low}..{high}, {digits} digits"));
        assert!(s.clamped() > 0 || high <= MAX_NS);
    }
}

/// The same outcome from both decoders: equal histograms, or the same error.
fn assert_same_outcome(encoded: &str, what: &str) -> bool {
    match (Latency::decode(encoded), Sparse::decode(encoded)) {
        (Ok(l), Ok(s)) => {
            assert_eq!(s, Sparse::of(&l), "{what}");
            true
        }
        (Err(a), Err(b)) => {
            assert_eq!(format!("{a:#}"), format!("{b:#}"), "{what}");
            false
        }
        (a, b) => panic!("{what}: full {:?}, sparse {:?}", a.err(), b.err()),
    }
}

#[test]
fn edited_encodings_decode_or_fail_exactly_as_the_full_decoder_does() {
    let mut rng = Rng(4);
    let (mut decoded, mut refused) = (0, 0);
    for case in 0..1500 {
        let l = random_latency(&mut rng);
        let mut v2 = uncompressed(l.histogram());
        let payload = v2.len() - V2_HEADER_LEN;
        match rng.below(6) {
            // A byte of the counts, or of the header, changed.
            0 | 1 if payload > 0 => {
                let at = V2_HEADER_LEN + rng.below(payload as u64) as usize;
                v2[at] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(V2_HEADER_LEN as u64) as usize;
                v2[at] ^= 1 << rng.below(8);
            }
            // Counts cut short or run on past the last bucket.
            3 => {
                let cut = rng.below(payload as u64 + 1) as usize;
                v2.truncate(V2_HEADER_LEN + cut);
                v2[4..8].copy_from_slice(&(cut as u32).to_be_bytes());
            }
            4 => {
                let extra: Vec<u8> = (0..1 + rng.below(12)).map(|_| rng.next() as u8).collect();
                v2.extend_from_slice(&extra);
                let len = (v2.len() - V2_HEADER_LEN) as u32;
                v2[4..8].copy_from_slice(&len.to_be_bytes());
            }
            // A run of empty buckets that jumps past the last one, then a count.
            _ => {
                v2.extend_from_slice(&[0x81, 0x90, 0x04, 0x02]);
                let len = (v2.len() - V2_HEADER_LEN) as u32;
                v2[4..8].copy_from_slice(&len.to_be_bytes());
            }
        }
        if assert_same_outcome(&b64(&v2), &format!("case {case}")) {
            decoded += 1;
        } else {
            refused += 1;
        }
    }
    // Both outcomes were exercised, so neither side of the comparison is vacuous.
    assert!(
        decoded > 150 && refused > 150,
        "{decoded} decoded, {refused} refused"
    );
}
