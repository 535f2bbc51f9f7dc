//! Real-size benchmarks through the real loading path: a model folder (any, with `--model`, or
//! the architecture's folder that `make-model` writes once into a cache, see
//! [`crate::make_model::ensure_cached`]) loaded by [`crate::native::load`] (the one loader),
//! then timed per UNet step (classifier-free-guidance batch of 2) and per VAE decode, with peak
//! memory. The prompts are encoded by the model's own text encoder.
//! Native only (wall-clock timing); the browser has its own timing in the worker.
//! [`suppress`]: the same for SuppressEOT (cost ratio to plain generation).

pub mod suppress;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::error::Error;
use crate::loader::{LoadOptions, Parts};
use crate::models::UNetCapture;
use crate::native::SingleFileOptions;
use crate::pipeline::StableDiffusion;
use crate::weights::WeightStorage;

/// Architectures the bench knows (those `make-model` writes).
pub use crate::make_model::Arch;

/// The model a bench runs.
#[derive(Clone, Debug)]
pub struct BenchModel {
    /// Shown as `arch` in the reports: the architecture (`Sd15`, `BkSdmTiny`) or the folder name.
    pub label: String,
    /// Folder (or single file) loaded.
    pub path: PathBuf,
    /// Weights variant loaded (`fp16`).
    pub variant: Option<String>,
    /// Seconds spent writing the model first (0 when it was already there).
    pub make_seconds: f64,
}

impl BenchModel {
    /// Any model folder or single file on disk.
    pub fn folder(path: &Path, variant: Option<&str>) -> Self {
        let label = path.file_name().and_then(|s| s.to_str()).unwrap_or("model").to_string();
        Self { label, path: path.to_path_buf(), variant: variant.map(str::to_string), make_seconds: 0.0 }
    }

    /// The architecture's cached folder, made with `make-model` first when absent or incomplete
    /// (progress on stderr).
    pub fn arch(arch: Arch, variant: Option<&str>) -> Result<Self, Error> {
        let t = Instant::now();
        let mut last = String::new();
        let (path, made) = crate::make_model::ensure_cached(arch, variant, &mut |p| {
            if p.done == p.total && p.total > 1 << 20 && p.file != last {
                last = p.file.to_string();
                eprintln!("make-model {arch}: {} ({:.2} GB)", p.file, p.total as f64 / 1e9);
            }
        })?;
        let make_seconds = if made.is_some() { t.elapsed().as_secs_f64() } else { 0.0 };
        Ok(Self { label: format!("{arch:?}"), path, variant: variant.map(str::to_string), make_seconds })
    }

    /// Loads the whole pipeline through the one loader; returns it and the seconds it took
    /// (device synced).
    pub fn load(&self, device: &Device, storage: WeightStorage) -> Result<(StableDiffusion, f64), Error> {
        let t = Instant::now();
        let opts = LoadOptions { storage, variant: self.variant.clone(), parts: Parts::All, ..LoadOptions::default() };
        let sd = crate::native::load(&self.path, &SingleFileOptions::default(), &opts, device)?.into_full()?;
        sync(device)?;
        Ok((sd, t.elapsed().as_secs_f64()))
    }
}

/// The benches' image size check (a positive multiple of 8), before any model is made or loaded.
pub fn validate_size(size: usize) -> Result<(), Error> {
    if !size.is_multiple_of(8) || size == 0 {
        return Err(Error::from(crate::error::InputError::setting("size", format!("must be a positive multiple of 8, got {size}"))));
    }
    Ok(())
}

fn sync(d: &Device) -> Result<(), Error> {
    d.sync().map_err(|e| Error::from(crate::error::DeviceError::Sync { reason: format!("{e:?}") }))
}

/// `[uncond, cond]` embeddings of `prompt` from the model's text encoder (`[2, 77, D]`).
fn cfg_context(sd: &StableDiffusion, prompt: &str) -> Result<Tensor<3>, Error> {
    Ok(sd.prompt.encode(&["", prompt], false)?.1.last_hidden_state)
}

/// What `bench generate` measured.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub arch: String,
    /// The model folder (or file) loaded.
    pub model: String,
    /// Seconds `make-model` took to write it first (0: it was there).
    pub make_seconds: f64,
    pub size: usize,
    pub device: String,
    pub dtype: String,
    pub unet_parameters: usize,
    pub vae_parameters: usize,
    /// The loader's time for the whole pipeline (tokenizer, text encoder, UNet, VAE), synced.
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
    model: &BenchModel,
    size: usize,
    steps: usize,
    device: &Device,
    device_name: &str,
    query_chunk: Option<usize>,
    storage: WeightStorage,
) -> Result<BenchReport, Error> {
    validate_size(size)?;
    let launches0 = crate::kernels::flash_attention::launches();
    let (mut sd, load_seconds) = model.load(device, storage)?;
    sd.unet.set_query_chunk_size(query_chunk);
    sd.vae.set_query_chunk_size(query_chunk);
    let (unet_parameters, vae_parameters) = (sd.unet.num_params(), sd.vae.num_params());
    let context = cfg_context(&sd, "a photo of an astronaut riding a horse on mars")?;
    sync(device)?;

    let mut peak = 0u64;
    let mut sample_peak = |d: &Device| {
        if let Some(u) = d.memory_pool_usage() {
            peak = peak.max(u.bytes_reserved);
        }
    };
    sample_peak(device);
    let h = size / 8;
    let mut latents = Tensor::<4>::random([1, sd.latent_channels(), h, h], burn::tensor::Distribution::Normal(0.0, 1.0), device);
    let mut unet_step_seconds = Vec::with_capacity(steps);
    for i in 0..steps {
        let t = Instant::now();
        let timestep = 999.0 - 999.0 * i as f64 / steps.max(1) as f64;
        let input = Tensor::cat(vec![latents.clone(), latents.clone()], 0);
        let eps = sd.unet.forward(input, &[timestep], context.clone(), &mut UNetCapture::none());
        let mut halves = eps.chunk(2, 0).into_iter();
        let (u, c) = (halves.next().expect("uncond"), halves.next().expect("cond"));
        let guided = u.clone() + (c - u) * 7.5;
        latents = latents - guided * 0.05;
        sync(device)?;
        sample_peak(device);
        unet_step_seconds.push(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let image = sd.vae.decode(latents / sd.vae.scaling_factor);
    drop(image);
    sync(device)?;
    sample_peak(device);
    let vae_decode_seconds = t.elapsed().as_secs_f64();
    let (peak_memory_bytes, memory_source) =
        if device.memory_pool_usage().is_some() { (peak, "device memory pool, reserved bytes (sampled after each step)") } else { (peak_rss(), "process peak RSS (CPU backend)") };
    Ok(BenchReport {
        arch: model.label.clone(),
        model: model.path.display().to_string(),
        make_seconds: model.make_seconds,
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
