//! `bench train`: one textual-inversion step (text encoder with a trainable row, DDPM noising,
//! UNet, MSE, backward to the row, gradient readback) at real size with random weights; time
//! per step and peak memory.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::{Arch, peak_rss, random_weights};
use crate::error::Error;
use crate::models::{CLIPTextConfig, CLIPTextModel, UNet2DConditionConfig, UNet2DConditionModel};
use crate::schedulers::PredictionType;
use crate::weights::WeightStorage;
use crate::train::{Batch, diffusion_loss, diffusion_loss_checkpointed};

/// What `bench train` measured.
#[derive(Debug, serde::Serialize)]
pub struct TrainBenchReport {
    pub arch: String,
    pub size: usize,
    pub device: String,
    pub dtype: String,
    pub unet_parameters: usize,
    pub text_encoder_parameters: usize,
    /// Bytes of the frozen weights as stored on the device (f32).
    pub weight_bytes: u64,
    pub load_seconds: f64,
    /// Wall time of each training step (forward, backward, gradient readback).
    pub step_seconds: Vec<f64>,
    /// Peak memory (device memory pool reserved bytes on wgpu, peak RSS on CPU), weights included.
    pub peak_memory_bytes: u64,
    pub memory_source: String,
    pub query_chunk_size: Option<usize>,
    pub gradient_checkpointing: bool,
}

fn clip_config(arch: Arch) -> serde_json::Value {
    match arch {
        // OpenCLIP ViT-H/14 text tower as SD 2.x ships it (23 layers: the last one is dropped)
        Arch::Sd21 => serde_json::json!({"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 23, "num_attention_heads": 16, "hidden_act": "gelu"}),
        // CLIP ViT-L/14 text tower (SD 1.x, BK-SDM)
        _ => serde_json::json!({"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_act": "quick_gelu"}),
    }
}

/// Runs `steps` textual-inversion steps at `size` x `size` pixels (batch 1, one vector).
#[allow(clippy::too_many_arguments)]
pub fn bench_train(
    arch: Arch,
    size: usize,
    steps: usize,
    device: &Device,
    device_name: &str,
    query_chunk: Option<usize>,
    gradient_checkpointing: bool,
    storage: WeightStorage,
) -> Result<TrainBenchReport, Error> {
    if size % 8 != 0 || size == 0 {
        return Err(Error::from(crate::error::InputError::setting("size", format!("must be a positive multiple of 8, got {size}"))));
    }
    let t0 = Instant::now();
    let uc = UNet2DConditionConfig::from_json(&arch.unet_config().to_string(), "bench unet config")?;
    let (mut map, unet_parameters) = random_weights("random UNet", &UNet2DConditionModel::param_specs(&uc), device, 1, storage);
    let mut unet = UNet2DConditionModel::from_map(&uc, &mut map).no_grad();
    unet.set_query_chunk_size(query_chunk);
    let cc = CLIPTextConfig::from_json(&clip_config(arch).to_string(), "bench clip config")?;
    let (mut map, text_encoder_parameters) = random_weights("random CLIP", &CLIPTextModel::param_specs(&cc), device, 3, storage);
    let te = CLIPTextModel::from_map(&cc, &mut map).no_grad();
    let sync = |d: &Device| d.sync().map_err(|e| Error::from(crate::error::DeviceError::Sync { reason: format!("{e:?}") }));
    sync(device)?;
    let load_seconds = t0.elapsed().as_secs_f64();

    // scaled_linear alphas_cumprod (SD 1.x/2.x training schedule)
    let (a, b) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let mut acp = Vec::with_capacity(1000);
    let mut p = 1.0;
    for i in 0..1000 {
        p *= 1.0 - (a + (b - a) * i as f64 / 999.0).powi(2);
        acp.push(p);
    }
    let prediction = if arch == Arch::Sd21 { PredictionType::VPrediction } else { PredictionType::Epsilon };
    let d = cc.hidden_size;
    let placeholder = 2368u32; // "cat": its row is replaced by the trainable one
    let mut ids = vec![49406u32, 320, 1125, 539, 320, placeholder, 49407];
    ids.resize(77, 49407);
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
        arch: format!("{arch:?}"),
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
