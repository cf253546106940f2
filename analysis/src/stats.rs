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

/// A latency distribution as sorted values with cumulative counts (one entry per histogram
/// bucket), so that "the value of rank k" is a binary search. Built from an HdrHistogram,
/// it stands for every recorded sample without expanding them.
#[derive(Clone, Debug, Default)]
pub struct Ranked {
    /// (cumulative count up to and including this value, value)
    cum: Vec<(u64, u64)>,
}

impl Ranked {
    pub fn from_histogram(h: &hdrhistogram::Histogram<u64>) -> Ranked {
        Ranked::from_recorded(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value())),
        )
    }

    /// From a histogram's buckets only, which is all the ranks need.
    pub fn from_sparse(h: &crate::hist::Sparse) -> Ranked {
        Ranked::from_recorded(h.iter())
    }

    /// From recorded buckets, (value, count) in ascending order.
    fn from_recorded(buckets: impl Iterator<Item = (u64, u64)>) -> Ranked {
        let mut total = 0u64;
        let cum = buckets
            .map(|(value, count)| {
                total = total.saturating_add(count);
                (total, value)
            })
            .collect();
        Ranked { cum }
    }

    pub fn len(&self) -> u64 {
        self.cum.last().map_or(0, |c| c.0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of 0-based rank `k` (clamped to the last).
    pub fn at_rank(&self, k: u64) -> u64 {
        let i = self.cum.partition_point(|(c, _)| *c <= k);
        self.cum[i.min(self.cum.len() - 1)].1
    }

    /// The 1-based rank of quantile `q` (as HdrHistogram counts it: at least 1).
    fn quantile_rank(&self, q: f64) -> u64 {
        ((q * self.len() as f64).ceil() as u64).clamp(1, self.len())
    }

    pub fn quantile(&self, q: f64) -> u64 {
        self.at_rank(self.quantile_rank(q) - 1)
    }

    /// `iters` bootstrap replicates of quantile `q`. Exact, and O(log n) each: in a
    /// resample of n draws with replacement, the k-th smallest draw is
    /// `sorted[floor(n * U(k))]` where `U(k)`, the k-th smallest of n uniforms, is
    /// Beta(k, n + 1 - k) distributed.
    pub fn bootstrap_quantile(&self, q: f64, iters: usize, seed: u64) -> Vec<f64> {
        let n = self.len();
        if n == 0 {
            return Vec::new();
        }
        let k = self.quantile_rank(q);
        let mut rng = SplitMix(seed);
        (0..iters)
            .map(|_| {
                let u = beta(&mut rng, k as f64, (n + 1 - k) as f64);
                self.at_rank(((u * n as f64) as u64).min(n - 1)) as f64
            })
            .collect()
    }
}

fn uniform(rng: &mut SplitMix) -> f64 {
    // 53 random bits in (0, 1).
    ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

fn normal(rng: &mut SplitMix) -> f64 {
    // Box-Muller.
    let (u1, u2) = (uniform(rng), uniform(rng));
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Gamma(shape, 1) for shape >= 1 (Marsaglia and Tsang, 2000).
fn gamma(rng: &mut SplitMix, shape: f64) -> f64 {
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = uniform(rng);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Beta(a, b) for a, b >= 1.
fn beta(rng: &mut SplitMix, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    x / (x + y)
}

/// The central `confidence` interval of bootstrap draws (percentile method).
pub fn interval(draws: Vec<f64>, confidence: f64) -> (f64, f64) {
    if draws.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    percentile_interval(draws, confidence)
}

/// Welch's t-test: the difference of means `mean(b) - mean(a)` and its `confidence`
/// interval, for two samples of at least two values each with unequal variances (what
/// mmtests' compare-kernels uses across iterations).
pub fn welch_interval(a: &[f64], b: &[f64], confidence: f64) -> Option<(f64, f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let mv = |x: &[f64]| {
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
        (m, v, n)
    };
    let (ma, va, na) = mv(a);
    let (mb, vb, nb) = mv(b);
    let diff = mb - ma;
    let se2 = va / na + vb / nb;
    if se2 <= 0.0 {
        return Some((diff, diff, diff));
    }
    let df = se2 * se2 / ((va / na).powi(2) / (na - 1.0) + (vb / nb).powi(2) / (nb - 1.0));
    let t = student_t_quantile(0.5 + confidence / 2.0, df);
    let half = t * se2.sqrt();
    Some((diff, diff - half, diff + half))
}

/// ln Gamma (Lanczos approximation, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz).
fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(1.0 - x, b, a);
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp() / a;
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..300 {
        let m = m as f64;
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + num / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-12 {
            break;
        }
    }
    front * f
}

/// P(T <= t) for Student's t with `df` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * inc_beta(x, df / 2.0, 0.5);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p` quantile of Student's t (bisection on the CDF).
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (-1e3, 1e3);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

#[cfg(test)]
mod comparison_stats_tests {
    use super::*;

    #[test]
    fn student_t_quantiles_match_the_tables() {
        for (df, t) in [(1.0, 12.706), (2.0, 4.303), (5.0, 2.571), (30.0, 2.042)] {
            let q = student_t_quantile(0.975, df);
            assert!((q - t).abs() < 2e-3, "df {df}: {q} vs {t}");
        }
        assert!((student_t_quantile(0.975, 1e6) - 1.960).abs() < 1e-3);
    }

    #[test]
    fn welch_sees_a_shift_between_tight_groups_and_not_between_overlapping_ones() {
        let (_, lo, _) = welch_interval(&[10.0, 10.2, 9.9], &[12.0, 12.1, 11.8], 0.95).unwrap();
        assert!(lo > 0.0);
        let (_, lo, hi) = welch_interval(&[10.0, 14.0, 9.0], &[11.0, 9.5, 13.0], 0.95).unwrap();
        assert!(lo < 0.0 && hi > 0.0);
        assert!(welch_interval(&[1.0], &[1.0, 2.0], 0.95).is_none());
    }

    fn ranked(values: impl Iterator<Item = u64>) -> Ranked {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        Ranked::from_histogram(&h)
    }

    #[test]
    fn ranked_quantiles_agree_with_hdrhistogram() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).unwrap();
        for i in 0..5000u64 {
            h.record(1000 + (i * 7919) % 4000).unwrap();
        }
        let r = Ranked::from_histogram(&h);
        assert_eq!(r.len(), 5000);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(r.quantile(q), h.value_at_quantile(q), "q {q}");
        }
    }

    #[test]
    fn quantile_bootstrap_brackets_the_estimate_and_narrows_with_samples() {
        let small = ranked((0..200).map(|i| 1000 + (i * 7919) % 1000));
        let large = ranked((0..20000).map(|i| 1000 + (i * 7919) % 1000));
        let (lo, hi) = interval(small.bootstrap_quantile(0.5, 2000, 1), 0.95);
        let m = small.quantile(0.5) as f64;
        assert!(lo <= m && m <= hi, "{lo} {m} {hi}");
        let (lo2, hi2) = interval(large.bootstrap_quantile(0.5, 2000, 1), 0.95);
        assert!(hi2 - lo2 < hi - lo);
        // The median of 200 uniform values on [1000, 2000): standard error about 35.
        assert!(hi - lo > 40.0 && hi - lo < 300.0, "{lo} {hi}");
    }
}
