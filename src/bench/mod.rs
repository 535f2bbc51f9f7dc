//! Real-size benchmarks with the real architectures and random weights (no weights can be
//! downloaded here): SD 1.5, SD 2.1 (768-v) and BK-SDM-Tiny UNets + the SD VAE, timed per UNet
//! step (classifier-free-guidance batch of 2) and per VAE decode, with peak memory.
//! Native only (wall-clock timing); the browser has its own timing in the worker.
//! [`suppress`]: the same for SuppressEOT (cost ratio to plain generation).

pub mod suppress;

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::Error;
use crate::models::{AutoencoderKL, AutoencoderKLConfig, UNet2DConditionConfig, UNet2DConditionModel, UNetCapture};
use crate::weights::{ParamSpec, TensorMap, WeightStorage};

/// Architectures the bench knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Sd15,
    Sd21,
    BkSdmTiny,
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sd15" => Ok(Self::Sd15),
            "sd21" => Ok(Self::Sd21),
            "bk-sdm-tiny" => Ok(Self::BkSdmTiny),
            o => Err(format!("unknown arch `{o}`: use sd15, sd21 or bk-sdm-tiny")),
        }
    }
}

impl Arch {
    /// `unet/config.json` of the architecture (the keys that matter; the rest default).
    pub fn unet_config(self) -> serde_json::Value {
        let cross = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
        let up = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];
        match self {
            Self::Sd15 => serde_json::json!({
                "sample_size": 64, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
                "down_block_types": cross, "up_block_types": up, "attention_head_dim": 8, "cross_attention_dim": 768,
                "norm_num_groups": 32, "use_linear_projection": false
            }),
            Self::Sd21 => serde_json::json!({
                "sample_size": 96, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
                "down_block_types": cross, "up_block_types": up, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                "norm_num_groups": 32, "use_linear_projection": true, "upcast_attention": true
            }),
            // BK-SDM-Tiny (Kim et al. 2023): SD 1.5 without the mid block and the innermost
            // (1280, attention-free) stage, one resnet/attention pair per down stage.
            Self::BkSdmTiny => serde_json::json!({
                "sample_size": 64, "block_out_channels": [320, 640, 1280], "layers_per_block": 1,
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32, "mid_block_type": null
            }),
        }
    }

    /// The SD VAE (`AutoencoderKL`, 83.7M parameters), shared by all three.
    pub fn vae_config(self) -> serde_json::Value {
        serde_json::json!({
            "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "scaling_factor": 0.18215
        })
    }

    pub fn cross_attention_dim(self) -> usize {
        if self == Self::Sd21 { 1024 } else { 768 }
    }
}

/// Random weights for `specs` uploaded one tensor at a time (xorshift uniforms scaled to
/// 1/sqrt(fan_in) for matrices, ~1 for norm scales, small biases).
/// Random weights for `specs` (matrices ~ 1/sqrt(fan_in)), kept as `storage` says.
pub fn random_weights(name: &str, specs: &[ParamSpec], device: &Device, seed: u64, storage: WeightStorage) -> (TensorMap, usize) {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut count = 0;
    let tensors = specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            count += n;
            let (scale, offset) = if s.shape.len() >= 2 {
                (1.7 / (s.shape[1..].iter().product::<usize>() as f32).sqrt(), 0.0)
            } else if s.key.contains("norm") && s.key.ends_with("weight") {
                (0.1, 1.0)
            } else {
                (0.05, 0.0)
            };
            let v: Vec<f32> = (0..n).map(|_| next() * scale + offset).collect();
            let t = Tensor::<1>::from_data(TensorData::new(v, [n]), device);
            let t = if storage == WeightStorage::F16 && s.shape.len() >= 2 { t.cast(burn::tensor::DType::F16) } else { t };
            (s.clone(), t)
        })
        .collect();
    (TensorMap::from_tensors(name, tensors), count)
}

/// What `bench generate` measured.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub arch: String,
    pub size: usize,
    pub device: String,
    pub dtype: String,
    pub unet_parameters: usize,
    pub vae_parameters: usize,
    pub load_seconds: f64,
    /// Wall time of each UNet step (CFG batch of 2, guidance and an Euler update), synced.
    pub unet_step_seconds: Vec<f64>,
    pub vae_decode_seconds: f64,
    /// Peak memory: the GPU memory pool's reserved bytes (sampled after every step) on wgpu,
    /// the process's peak resident set on the CPU backend.
    pub peak_memory_bytes: u64,
    pub memory_source: String,
    pub query_chunk_size: Option<usize>,
    /// Launches of the WGSL flash-attention kernel during the bench (0 on the CPU, or with
    /// `--no-flash-attention`: then attention is the plain query-chunked path).
    pub flash_attention_launches: u64,
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Runs the generation benchmark: `steps` UNet steps at `size` x `size` pixels and one VAE decode.
pub fn bench_generate(
    arch: Arch,
    size: usize,
    steps: usize,
    device: &Device,
    device_name: &str,
    query_chunk: Option<usize>,
    storage: WeightStorage,
) -> Result<BenchReport, Error> {
    if size % 8 != 0 || size == 0 {
        return Err(Error::from(crate::error::InputError::setting("size", format!("must be a positive multiple of 8, got {size}"))));
    }
    let t0 = Instant::now();
    let launches0 = crate::kernels::flash_attention::launches();
    let uc = UNet2DConditionConfig::from_json(&arch.unet_config().to_string(), "bench unet config")?;
    let (mut map, unet_parameters) = random_weights("random UNet", &UNet2DConditionModel::param_specs(&uc), device, 1, storage);
    let mut unet = UNet2DConditionModel::from_map(&uc, &mut map);
    unet.set_query_chunk_size(query_chunk);
    let vc = AutoencoderKLConfig::from_json(&arch.vae_config().to_string(), "bench vae config")?;
    let (mut map, vae_parameters) = random_weights("random VAE", &AutoencoderKL::param_specs(&vc), device, 2, storage);
    let mut vae = AutoencoderKL::from_map(&vc, &mut map);
    vae.set_query_chunk_size(query_chunk);
    let sync = |d: &Device| d.sync().map_err(|e| Error::from(crate::error::DeviceError::Sync { reason: format!("{e:?}") }));
    sync(device)?;
    let load_seconds = t0.elapsed().as_secs_f64();

    let mut peak = 0u64;
    let mut sample_peak = |d: &Device| {
        if let Some(u) = d.memory_pool_usage() {
            peak = peak.max(u.bytes_reserved);
        }
    };
    sample_peak(device);
    let h = size / 8;
    let mut latents = Tensor::<4>::random([1, 4, h, h], burn::tensor::Distribution::Normal(0.0, 1.0), device);
    let context = Tensor::<3>::random([2, 77, arch.cross_attention_dim()], burn::tensor::Distribution::Normal(0.0, 1.0), device);
    let mut unet_step_seconds = Vec::with_capacity(steps);
    for i in 0..steps {
        let t = Instant::now();
        let timestep = 999.0 - 999.0 * i as f64 / steps.max(1) as f64;
        let input = Tensor::cat(vec![latents.clone(), latents.clone()], 0);
        let eps = unet.forward(input, &[timestep], context.clone(), &mut UNetCapture::none());
        let mut halves = eps.chunk(2, 0).into_iter();
        let (u, c) = (halves.next().expect("uncond"), halves.next().expect("cond"));
        let guided = u.clone() + (c - u) * 7.5;
        latents = latents - guided * 0.05;
        sync(device)?;
        sample_peak(device);
        unet_step_seconds.push(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let image = vae.decode(latents / vc.scaling_factor);
    drop(image);
    sync(device)?;
    sample_peak(device);
    let vae_decode_seconds = t.elapsed().as_secs_f64();
    let (peak_memory_bytes, memory_source) =
        if device.memory_pool_usage().is_some() { (peak, "device memory pool, reserved bytes (sampled after each step)") } else { (peak_rss(), "process peak RSS (CPU backend)") };
    Ok(BenchReport {
        arch: format!("{arch:?}"),
        size,
        device: device_name.into(),
        dtype: format!("{storage:?} weights, f32 compute").to_lowercase(),
        unet_parameters,
        vae_parameters,
        load_seconds,
        unet_step_seconds,
        vae_decode_seconds,
        peak_memory_bytes,
        memory_source: memory_source.into(),
        query_chunk_size: query_chunk,
        flash_attention_launches: crate::kernels::flash_attention::launches() - launches0,
    })
}

mod train;
pub use train::{TrainBenchReport, bench_train};
