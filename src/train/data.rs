//! Training data: the VAE latent cache (each photo, and its mirror image when flipping is on,
//! encoded once) and the seeded batch sampler (photo order, flip, template, timestep, noise and
//! the latent's own `mean + std * eps` sample), as diffusers' textual-inversion script draws
//! them.
//!
//! Every micro-batch `g` is drawn from its own random stream (ChaCha8 keyed by the run seed and
//! `g`), so a run resumed from a checkpoint continues with exactly the batches it would have
//! seen, and photo order is a fresh permutation per epoch (DataLoader `shuffle=True`).

use burn::tensor::{Device, Tensor, TensorData};

use super::Batch;
use crate::photos::{PhotoError, PreparedPhoto};
use crate::models::AutoencoderKL;
use crate::pipeline::NoiseRng;

/// Mean and std `[1, C, h, w]` of one encoded photo (device tensors, no graph).
#[derive(Clone, Debug)]
pub struct CachedLatent {
    pub mean: Tensor<4>,
    pub std: Tensor<4>,
}

/// Latent distributions of the training photos, computed once.
#[derive(Clone, Debug)]
pub struct LatentCache {
    /// Per photo: the photo as given.
    pub plain: Vec<CachedLatent>,
    /// Per photo: its horizontal mirror (empty when flipping is off).
    pub flipped: Vec<CachedLatent>,
    /// `(z - shift) * scaling` turns a VAE sample into a UNet latent.
    pub scaling_factor: f64,
    pub shift_factor: f64,
    /// File names, for logs.
    pub names: Vec<String>,
}

impl LatentCache {
    /// Encodes every photo (and its mirror when `flip`) with the VAE, one image at a time (the
    /// encoder's activations at 512x512 are the largest of the whole run).
    pub fn encode(vae: &AutoencoderKL, photos: &[PreparedPhoto], flip: bool) -> Result<Self, PhotoError> {
        if photos.is_empty() {
            return Err(PhotoError::NoPhotos);
        }
        let device = vae.device();
        let one = |p: &PreparedPhoto, mirrored: bool| {
            let (w, h) = p.image.dimensions();
            let x = Tensor::<4>::from_data(TensorData::new(p.pixels(mirrored), [1, 3, h as usize, w as usize]), &device);
            let d = vae.encode(x);
            CachedLatent { mean: d.mean.detach(), std: d.std.detach() }
        };
        let plain = photos.iter().map(|p| one(p, false)).collect();
        let flipped = if flip { photos.iter().map(|p| one(p, true)).collect() } else { Vec::new() };
        Ok(Self {
            plain,
            flipped,
            scaling_factor: vae.scaling_factor,
            shift_factor: vae.shift_factor,
            names: photos.iter().map(|p| p.name.clone()).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.plain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plain.is_empty()
    }

    pub fn device(&self) -> Device {
        self.plain[0].mean.device()
    }
}

/// How batches are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub seed: u64,
    /// Prompt templates with one `{}` for the placeholder string.
    pub templates: Vec<String>,
    /// Placeholder string put into the templates (`<tok>` or `<tok> <tok>_1 ...`).
    pub placeholder_string: String,
    /// Images per micro-batch.
    pub batch_size: usize,
    /// Probability of using the mirrored photo (needs a cache built with `flip`).
    pub flip_p: f64,
    pub num_train_timesteps: usize,
}

/// What was drawn for one batch item (for logs and `--replay` recordings).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SampleInfo {
    pub photo: usize,
    pub flipped: bool,
    pub template: usize,
    pub timestep: usize,
}

/// splitmix64: decorrelates (seed, index) pairs into ChaCha seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Photo index of the `g`-th draw: epochs of `n` draws, each a seeded permutation.
fn photo_of(seed: u64, n: usize, g: u64) -> usize {
    let epoch = g / n as u64;
    let mut rng = NoiseRng::new(mix(seed ^ mix(0x5048_4f54_4f53 ^ epoch)));
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm[(g % n as u64) as usize]
}

/// Draws micro-batch number `g` (0-based over the whole run): `(batch, what was drawn)`.
/// `prompt_ids` tokenizes a filled-in template to `model_max_length` ids.
pub fn sample_batch(
    cfg: &SamplerConfig,
    cache: &LatentCache,
    g: u64,
    prompt_ids: &dyn Fn(&str) -> Vec<u32>,
) -> (Batch, Vec<SampleInfo>) {
    let b = cfg.batch_size.max(1);
    let mut rng = NoiseRng::new(mix(cfg.seed ^ mix(g)));
    let mut latents = Vec::with_capacity(b);
    let mut infos = Vec::with_capacity(b);
    let mut ids = Vec::with_capacity(b);
    for k in 0..b {
        let photo = photo_of(cfg.seed, cache.len(), g * b as u64 + k as u64);
        let flipped = !cache.flipped.is_empty() && rng.uniform() < cfg.flip_p;
        let template = rng.below(cfg.templates.len() as u64) as usize;
        let timestep = rng.below(cfg.num_train_timesteps as u64) as usize;
        let src = if flipped { &cache.flipped[photo] } else { &cache.plain[photo] };
        let eps = rng.randn(src.mean.dims(), &src.mean.device());
        let z = src.mean.clone() + src.std.clone() * eps;
        latents.push((z - cache.shift_factor) * cache.scaling_factor);
        ids.push(prompt_ids(&cfg.templates[template].replace("{}", &cfg.placeholder_string)));
        infos.push(SampleInfo { photo, flipped, template, timestep });
    }
    let latents = Tensor::cat(latents, 0);
    let noise = rng.randn(latents.dims(), &latents.device());
    let batch = Batch { latents, noise, timesteps: infos.iter().map(|i| i.timestep).collect(), input_ids: ids };
    (batch, infos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_visit_every_photo_once() {
        for seed in [0u64, 1, 99] {
            for epoch in 0..4u64 {
                let mut seen: Vec<usize> = (0..5).map(|i| photo_of(seed, 5, epoch * 5 + i)).collect();
                seen.sort();
                assert_eq!(seen, vec![0, 1, 2, 3, 4]);
            }
        }
        // different seeds give different orders (not all equal over a few epochs)
        let order = |s| (0..20).map(|g| photo_of(s, 5, g)).collect::<Vec<_>>();
        assert_ne!(order(1), order(2));
    }
}
