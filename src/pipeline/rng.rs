//! The project's documented random number generator for initial latents and ancestral noise:
//! ChaCha8 seeded with the user's 64-bit seed, standard normals by the Box-Muller transform
//! (two uniforms in (0, 1] -> two normals), in row-major order of the tensor. Seeds therefore
//! reproduce across native and browser runs, but not torch's `randn` (pass diffusers' latents with
//! `--latents` to reproduce a diffusers image exactly).

use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// Seeded normal-noise source.
pub struct NoiseRng {
    rng: ChaCha8Rng,
    spare: Option<f32>,
}

impl NoiseRng {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), spare: None }
    }

    /// A uniform sample in (0, 1] (53 random bits).
    pub fn uniform(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A uniform integer in `[0, n)` (`n > 0`), without modulo bias (rejection sampling).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "NoiseRng::below(0)");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.rng.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// One standard normal sample.
    pub fn normal(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some((r * theta.sin()) as f32);
        (r * theta.cos()) as f32
    }

    /// A tensor of standard normals, `shape`, on `device`.
    pub fn randn(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.normal()).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_moments_and_are_reproducible() {
        let mut a = NoiseRng::new(42);
        let v: Vec<f64> = (0..200_000).map(|_| a.normal() as f64).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
        let mut b = NoiseRng::new(42);
        assert_eq!(v[..10].iter().map(|&x| x as f32).collect::<Vec<_>>(), (0..10).map(|_| b.normal()).collect::<Vec<_>>());
        let mut c = NoiseRng::new(43);
        assert_ne!(v[0] as f32, c.normal());
    }
}
