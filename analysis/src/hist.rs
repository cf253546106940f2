//! Latency histograms: recorded in nanoseconds with HdrHistogram (3 significant digits),
//! summarised in one place, and stored losslessly in results as HdrHistogram's V2
//! compressed serialization in base64 (readable by every HdrHistogram implementation).

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a histogram tracks: one hour in nanoseconds. Larger values are clamped
/// (and counted in `Latency::clamped`).
const MAX_NS: u64 = 3_600_000_000_000;

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
        self.h.add(&other.h).expect("same bounds");
        self.clamped += other.clamped;
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

    pub fn decode(s: &str) -> anyhow::Result<Latency> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
        let h: Histogram<u64> = Deserializer::new().deserialize(&mut bytes.as_slice())?;
        Ok(Latency { h, clamped: 0 })
    }
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
