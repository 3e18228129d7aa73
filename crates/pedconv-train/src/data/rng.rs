//! A small deterministic random number generator (SplitMix64) for the data pipeline: every
//! augmentation draws from a generator seeded by the run's seed, the image and its visit, so a
//! run is reproducible whatever thread decodes which image.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// Mixes several words into one seed.
pub fn seed_of(words: &[u64]) -> u64 {
    let mut rng = Rng(0x853C_49E6_748F_EA9B);
    for &word in words {
        rng.0 ^= word;
        rng.next_u64();
    }
    rng.next_u64()
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[low, high)`.
    pub fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Uniform integer in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Gamma(shape, 1), by Marsaglia and Tsang's method (boosted for `shape < 1`).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let boost = self.uniform().max(f64::MIN_POSITIVE).powf(1.0 / shape);
            return self.gamma(shape + 1.0) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b), as the ratio of two gamma variates.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y == 0.0 {
            return 0.5;
        }
        x / (x + y)
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.below(i + 1));
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample moments against the distributions' (20 000 draws: the standard error of a mean
    /// is below 0.01 for all of them, the bounds are about 4 of them).
    #[test]
    fn moments_match_the_distributions() {
        let mut rng = Rng::new(3);
        let n = 20_000;
        let mean = |f: &mut dyn FnMut() -> f64| (0..n).map(|_| f()).sum::<f64>() / n as f64;
        assert!((mean(&mut || rng.uniform()) - 0.5).abs() < 0.01);
        assert!(mean(&mut || rng.normal()).abs() < 0.03);
        assert!((mean(&mut || rng.gamma(0.2)) - 0.2).abs() < 0.02);
        assert!((mean(&mut || rng.gamma(3.0)) - 3.0).abs() < 0.05);
        // Beta(0.2, 0.2): mean 1/2, variance ab / ((a+b)²(a+b+1)) = 0.04 / (0.16 · 1.4).
        let draws: Vec<f64> = (0..n).map(|_| rng.beta(0.2, 0.2)).collect();
        let m = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!((m - 0.5).abs() < 0.02, "{m}");
        assert!((var - 0.04 / (0.16 * 1.4)).abs() < 0.01, "{var}");
        let mut perm = rng.permutation(10);
        perm.sort();
        assert_eq!(perm, (0..10).collect::<Vec<_>>());
    }
}
