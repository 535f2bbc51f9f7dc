//! `bench generate --suppress`: the cost of SuppressEOT relative to plain generation, on a model
//! loaded through the one loader (see [`super::BenchModel`]). Times a plain CFG step (batch 2), a suppressed step
//! without ITO (batch 4: both branches, uncond + cond), and an ITO step (pass A, masks,
//! `opt_iters` x pass B forward + backward stopped after the last map layer, then the batch-4
//! step), and extrapolates to a whole run with the default schedule (steps before SWR starts
//! cost a plain step: both branches are still identical there).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

use super::{BenchModel, validate_size};
use crate::error::Error;
use crate::models::UNetCapture;
use crate::suppress::{ItoTarget, MapLayers, SuppressParams, SuppressTokens, soft_weighted_regularization};

/// What `bench generate --suppress` measured (seconds, synced after each timed piece).
#[derive(Debug, serde::Serialize)]
pub struct SuppressBenchReport {
    pub arch: String,
    /// The model folder (or file) loaded.
    pub model: String,
    /// Seconds `make-model` took to write it first (0: it was there).
    pub make_seconds: f64,
    /// The loader's time for the whole pipeline, synced.
    pub load_seconds: f64,
    pub size: usize,
    pub device: String,
    /// Attention-map size ITO uses at this latent size.
    pub map_size: [usize; 2],
    pub map_layers: Vec<String>,
    pub opt_iters: usize,
    /// SWR of one prompt (readback, f64 SVD, upload).
    pub swr_seconds: f64,
    /// Plain generation step: CFG batch 2.
    pub plain_step_seconds: Vec<f64>,
    /// Suppressed step without ITO: batch 4 (original + suppressed, uncond + cond).
    pub swr_step_seconds: Vec<f64>,
    /// Suppressed step with ITO.
    pub ito_step_seconds: Vec<f64>,
    /// Mean pass B (forward to the last map layer + backward) within the ITO steps.
    pub ito_pass_b_seconds: f64,
    /// Steps of the run the ratios are for, and how many of them run ITO (defaults 0.2 / 0.4).
    pub run_steps: usize,
    pub run_ito_steps: usize,
    /// Whole-run cost of `generate --suppress` / plain `generate` (UNet work; VAE excluded).
    pub cost_ratio: f64,
    /// The same with `--suppress-opt-off` (SWR only).
    pub cost_ratio_swr_only: f64,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Times `steps` steps of each kind at `size` x `size` pixels and reports the cost ratio of a
/// `run_steps`-step suppressed run to a plain one.
#[allow(clippy::too_many_arguments)]
pub fn bench_suppress(
    model: &BenchModel,
    size: usize,
    steps: usize,
    run_steps: usize,
    opt_iters: usize,
    device: &Device,
    device_name: &str,
    query_chunk: Option<usize>,
    storage: crate::weights::WeightStorage,
) -> Result<SuppressBenchReport, Error> {
    validate_size(size)?;
    let sync = |d: &Device| d.sync().map_err(|e| Error::from(crate::error::DeviceError::Sync { reason: format!("{e:?}") }));
    let (mut sd, load_seconds) = model.load(device, storage)?;
    sd.unet.set_query_chunk_size(query_chunk);
    let unet = &sd.unet;
    let h = size / 8;
    let layers = MapLayers::for_unet(unet, [h, h]).ok_or(crate::error::InputError::NoCrossAttention { what: "SuppressEOT" })?;
    let normal = Distribution::Normal(0.0, 1.0);
    // "BOS a man wearing glasses EOS": the last word is the target
    let prompt = "a man wearing glasses";
    let ids = sd.prompt.tokenize(prompt).input_ids;
    let eos = ids.iter().position(|&i| i == sd.prompt.tokenizer.eos_id()).unwrap_or(ids.len() - 1);
    let tokens = SuppressTokens { n: eos + 1, target: vec![eos - 1] };
    let mut halves = sd.prompt.encode(&["", prompt], false)?.1.last_hidden_state.chunk(2, 0).into_iter();
    let (uncond, cond) = (halves.next().expect("uncond"), halves.next().expect("cond"));
    sync(device)?;
    let t = Instant::now();
    let swr = pollster::block_on(soft_weighted_regularization(cond.clone(), &tokens, 1.0))?;
    sync(device)?;
    let swr_seconds = t.elapsed().as_secs_f64();

    let mut latents = Tensor::<4>::random([1, sd.latent_channels(), h, h], normal, device);
    let timestep = |i: usize| 999.0 - 999.0 * i as f64 / steps.max(1) as f64;
    let guide = |eps: Tensor<4>| {
        let mut halves = eps.chunk(2, 0).into_iter();
        let (u, c) = (halves.next().expect("uncond"), halves.next().expect("cond"));
        u.clone() + (c - u) * 7.5
    };
    let mut plain_step_seconds = vec![];
    for i in 0..steps {
        let t = Instant::now();
        let eps = unet.forward(Tensor::cat(vec![latents.clone(), latents.clone()], 0), &[timestep(i)], Tensor::cat(vec![uncond.clone(), cond.clone()], 0), &mut UNetCapture::none());
        latents = latents - guide(eps) * 0.05;
        sync(device)?;
        plain_step_seconds.push(t.elapsed().as_secs_f64());
    }
    let mut both = Tensor::cat(vec![latents.clone(), latents], 0);
    let four = |e: Tensor<3>| Tensor::cat(vec![uncond.clone(), uncond.clone(), cond.clone(), e], 0);
    let batched_step = |both: Tensor<4>, e: Tensor<3>, t: f64| {
        let eps = unet.forward(Tensor::cat(vec![both.clone(), both.clone()], 0), &[t], four(e), &mut UNetCapture::none());
        both - guide(eps) * 0.05
    };
    let mut swr_step_seconds = vec![];
    for i in 0..steps {
        let t = Instant::now();
        both = batched_step(both, swr.clone(), timestep(i));
        sync(device)?;
        swr_step_seconds.push(t.elapsed().as_secs_f64());
    }
    let mut ito_step_seconds = vec![];
    let mut pass_b = vec![];
    for i in 0..steps {
        let t = Instant::now();
        let x_orig = both.clone().narrow(0, 0, 1);
        let x_supp = both.clone().narrow(0, 1, 1);
        let target = pollster::block_on(ItoTarget::new(unet, &layers, &tokens, x_orig, timestep(i), cond.clone()))?;
        let mut e = swr.clone();
        for _ in 0..opt_iters {
            let tb = Instant::now();
            let (_, grad) = target.loss_and_grad(unet, x_supp.clone(), timestep(i), e.clone());
            e = e - grad * 18.0;
            sync(device)?;
            pass_b.push(tb.elapsed().as_secs_f64());
        }
        both = batched_step(both, e, timestep(i));
        sync(device)?;
        ito_step_seconds.push(t.elapsed().as_secs_f64());
    }
    let defaults = SuppressParams::new("");
    let run_ito_steps = defaults.ito_steps(run_steps).len();
    // steps before SWR starts run one branch (a plain step)
    let shared = defaults.swr_start(run_steps);
    let (plain, swr_step, ito_step) = (mean(&plain_step_seconds), mean(&swr_step_seconds), mean(&ito_step_seconds));
    let plain_run = run_steps as f64 * plain;
    let cost_ratio = (shared as f64 * plain + (run_steps - shared - run_ito_steps) as f64 * swr_step + run_ito_steps as f64 * ito_step) / plain_run;
    let cost_ratio_swr_only = (shared as f64 * plain + (run_steps - shared) as f64 * swr_step) / plain_run;
    Ok(SuppressBenchReport {
        arch: model.label.clone(),
        model: model.path.display().to_string(),
        make_seconds: model.make_seconds,
        load_seconds,
        size,
        device: device_name.into(),
        map_size: layers.size,
        map_layers: layers.all_paths(),
        opt_iters,
        swr_seconds,
        plain_step_seconds,
        swr_step_seconds,
        ito_step_seconds,
        ito_pass_b_seconds: mean(&pass_b),
        run_steps,
        run_ito_steps,
        cost_ratio,
        cost_ratio_swr_only,
    })
}
