//! `bench train`: one textual-inversion step (text encoder with a trainable row, DDPM noising,
//! UNet, MSE, backward to the row, gradient readback) at real size, the model loaded through the
//! one loader (see [`super::BenchModel`]); time per step and peak memory (the whole pipeline's
//! weights included, as the page holds them while training).

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::{BenchModel, peak_rss, validate_size};
use crate::error::Error;
use crate::schedulers::PredictionType;
use crate::weights::WeightStorage;
use crate::train::{Batch, diffusion_loss, diffusion_loss_checkpointed};

/// What `bench train` measured.
#[derive(Debug, serde::Serialize)]
pub struct TrainBenchReport {
    pub arch: String,
    /// The model folder (or file) loaded.
    pub model: String,
    /// Seconds `make-model` took to write it first (0: it was there).
    pub make_seconds: f64,
    pub size: usize,
    pub device: String,
    pub dtype: String,
    pub unet_parameters: usize,
    pub text_encoder_parameters: usize,
    /// Bytes of the frozen weights as stored on the device (f32).
    pub weight_bytes: u64,
    /// The loader's time for the whole pipeline, synced.
    pub load_seconds: f64,
    /// Wall time of each training step (forward, backward, gradient readback).
    pub step_seconds: Vec<f64>,
    /// Peak memory (device memory pool reserved bytes on wgpu, peak RSS on CPU), weights included.
    pub peak_memory_bytes: u64,
    pub memory_source: String,
    pub query_chunk_size: Option<usize>,
    pub gradient_checkpointing: bool,
}

/// Runs `steps` textual-inversion steps at `size` x `size` pixels (batch 1, one vector).
#[allow(clippy::too_many_arguments)]
pub fn bench_train(
    model: &BenchModel,
    size: usize,
    steps: usize,
    device: &Device,
    device_name: &str,
    query_chunk: Option<usize>,
    gradient_checkpointing: bool,
    storage: WeightStorage,
) -> Result<TrainBenchReport, Error> {
    validate_size(size)?;
    let (sd, load_seconds) = model.load(device, storage)?;
    let mut unet = sd.unet.clone().no_grad();
    unet.set_query_chunk_size(query_chunk);
    let te = sd.prompt.text_encoder.clone().no_grad();
    let (unet_parameters, text_encoder_parameters) = (unet.num_params(), te.num_params());
    let prediction = sd.scheduler_config.prediction_type.as_deref().and_then(|p| p.parse().ok()).unwrap_or(PredictionType::Epsilon);
    let sync = |d: &Device| d.sync().map_err(|e| Error::from(crate::error::DeviceError::Sync { reason: format!("{e:?}") }));

    // scaled_linear alphas_cumprod (SD 1.x/2.x training schedule)
    let (a, b) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let mut acp = Vec::with_capacity(1000);
    let mut p = 1.0;
    for i in 0..1000 {
        p *= 1.0 - (a + (b - a) * i as f64 / 999.0).powi(2);
        acp.push(p);
    }
    let d = te.hidden_size();
    // "a photo of a cat" as the model's tokenizer pads it; "cat"'s row is replaced by the trainable one
    let ids = sd.prompt.tokenize("a photo of a cat").input_ids;
    let placeholder = ids[5];
    let grad_device = device.clone().autodiff();
    let h = size / 8;
    let mut peak = 0u64;
    let mut step_seconds = Vec::with_capacity(steps);
    let mut row: Vec<f32> = (0..d).map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.02).collect();
    for i in 0..steps {
        let t = Instant::now();
        let batch = Batch {
            latents: Tensor::<4>::random([1, 4, h, h], burn::tensor::Distribution::Normal(0.0, 1.0), device),
            noise: Tensor::<4>::random([1, 4, h, h], burn::tensor::Distribution::Normal(0.0, 1.0), device),
            timesteps: vec![(997 * (i + 1)) % 1000],
            input_ids: vec![ids.clone()],
        };
        let rows = Tensor::<2>::from_data(TensorData::new(row.clone(), [1, d]), &grad_device).require_grad();
        let grads = if gradient_checkpointing {
            let (_, ehs, g_ehs) = diffusion_loss_checkpointed(&te, &unet, &acp, prediction, &[placeholder], rows.clone(), &batch, 1.0);
            (ehs * g_ehs.autodiff()).sum().backward()
        } else {
            diffusion_loss(&te, &unet, &acp, prediction, &[placeholder], rows.clone(), &batch).backward()
        };
        let g = rows.grad(&grads).ok_or_else(|| crate::error::DeviceError::Readback { reason: "no gradient reached the row".into() })?;
        if let Some(u) = device.memory_pool_usage() {
            peak = peak.max(u.bytes_reserved);
        }
        let g = pollster::block_on(crate::readback::read_f32(g))?;
        for (r, g) in row.iter_mut().zip(&g) {
            *r -= 1e-3 * g.signum();
        }
        sync(device)?;
        if let Some(u) = device.memory_pool_usage() {
            peak = peak.max(u.bytes_reserved);
        }
        step_seconds.push(t.elapsed().as_secs_f64());
    }
    let (peak_memory_bytes, memory_source) =
        if device.memory_pool_usage().is_some() { (peak, "device memory pool, reserved bytes") } else { (peak_rss(), "process peak RSS (CPU backend)") };
    Ok(TrainBenchReport {
        arch: model.label.clone(),
        model: model.path.display().to_string(),
        make_seconds: model.make_seconds,
        size,
        device: device_name.into(),
        dtype: format!("{storage:?} weights, f32 compute").to_lowercase(),
        unet_parameters,
        text_encoder_parameters,
        weight_bytes: if storage == WeightStorage::F16 { 2 } else { 4 } * (unet_parameters + text_encoder_parameters) as u64,
        load_seconds,
        step_seconds,
        peak_memory_bytes,
        memory_source: memory_source.into(),
        query_chunk_size: query_chunk,
        gradient_checkpointing,
    })
}
