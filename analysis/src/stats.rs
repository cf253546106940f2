//! Statistics for comparisons: medians and a bootstrap confidence interval for the
//! difference of two medians (resampling with a fixed seed, so a result file is
//! reproducible from its samples).

/// Median of a sample (the mean of the two middle values for an even count).
pub fn median(v: &[u64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2] as f64
    } else {
        (s[n / 2 - 1] as f64 + s[n / 2] as f64) / 2.0
    }
}

/// splitmix64: a small, well-known generator; enough for resampling.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `median(b) - median(a)` and its percentile-bootstrap interval at `confidence`
/// (e.g. 0.95) from `iters` resamples of each side.
pub fn bootstrap_median_diff(
    a: &[u64],
    b: &[u64],
    iters: usize,
    confidence: f64,
    seed: u64,
) -> (f64, f64, f64) {
    let diff = median(b) - median(a);
    if a.is_empty() || b.is_empty() || iters == 0 {
        return (diff, f64::NAN, f64::NAN);
    }
    let mut rng = SplitMix(seed);
    let mut draws = Vec::with_capacity(iters);
    let mut ra = vec![0u64; a.len()];
    let mut rb = vec![0u64; b.len()];
    for _ in 0..iters {
        for x in ra.iter_mut() {
            *x = a[(rng.next() % a.len() as u64) as usize];
        }
        for x in rb.iter_mut() {
            *x = b[(rng.next() % b.len() as u64) as usize];
        }
        draws.push(median(&rb) - median(&ra));
    }
    let (lo, hi) = percentile_interval(draws, confidence);
    (diff, lo, hi)
}

/// The central `confidence` interval of bootstrap draws (percentile method).
fn percentile_interval(mut draws: Vec<f64>, confidence: f64) -> (f64, f64) {
    draws.sort_by(|x, y| x.total_cmp(y));
    let n = draws.len();
    let tail = (1.0 - confidence) / 2.0;
    let lo = draws[((n as f64 * tail) as usize).min(n - 1)];
    let hi = draws[((n as f64 * (1.0 - tail)) as usize).min(n - 1)];
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3, 1, 2]), 2.0);
        assert_eq!(median(&[4, 1, 2, 3]), 2.5);
    }

    #[test]
    fn a_real_shift_is_inside_a_tight_interval_that_excludes_zero() {
        let a: Vec<u64> = (0..500).map(|i| 1000 + (i * 7919 % 100)).collect();
        let b: Vec<u64> = a.iter().map(|x| x + 200).collect();
        let (d, lo, hi) = bootstrap_median_diff(&a, &b, 1000, 0.95, 1);
        assert!((d - 200.0).abs() < 1e-9);
        assert!(lo <= 200.0 && 200.0 <= hi && lo > 0.0, "{lo} {hi}");
    }

    #[test]
    fn no_shift_gives_an_interval_around_zero() {
        let a: Vec<u64> = (0..500).map(|i| 1000 + (i * 7919 % 100)).collect();
        let b: Vec<u64> = (0..500).map(|i| 1000 + (i * 104729 % 100)).collect();
        let (_, lo, hi) = bootstrap_median_diff(&a, &b, 1000, 0.95, 1);
        assert!(lo <= 0.0 && 0.0 <= hi, "{lo} {hi}");
    }
}

/// The median of `v` and its percentile-bootstrap interval at `confidence`.
pub fn bootstrap_median_ci(v: &[u64], iters: usize, confidence: f64, seed: u64) -> (f64, f64, f64) {
    let m = median(v);
    if v.len() < 2 || iters == 0 {
        return (m, m, m);
    }
    let mut rng = SplitMix(seed);
    let mut draws = Vec::with_capacity(iters);
    let mut r = vec![0u64; v.len()];
    for _ in 0..iters {
        for x in r.iter_mut() {
            *x = v[(rng.next() % v.len() as u64) as usize];
        }
        draws.push(median(&r));
    }
    let (lo, hi) = percentile_interval(draws, confidence);
    (m, lo, hi)
}

#[cfg(test)]
mod median_ci_tests {
    use super::*;

    #[test]
    fn the_median_lies_in_its_interval_and_the_interval_narrows_with_more_samples() {
        let small: Vec<u64> = (0..20).map(|i| 1000 + (i * 7919 % 500)).collect();
        let large: Vec<u64> = (0..2000).map(|i| 1000 + (i * 7919 % 500)).collect();
        let (m, lo, hi) = bootstrap_median_ci(&small, 500, 0.95, 3);
        assert!(lo <= m && m <= hi);
        let (m2, lo2, hi2) = bootstrap_median_ci(&large, 500, 0.95, 3);
        assert!(lo2 <= m2 && m2 <= hi2);
        assert!(hi2 - lo2 < hi - lo, "[{lo2}, {hi2}] vs [{lo}, {hi}]");
    }
}
