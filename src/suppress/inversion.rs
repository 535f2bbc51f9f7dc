//! Real-photo inversion as SuppressEOT's real-image script does it, ported from null-text
//! inversion (Mokady et al., CVPR 2023, `null_text_w_ptp.ipynb`, class `NullInversion`):
//!
//! - [`encode_image`]: `image2latent`, the VAE posterior mean times `scaling_factor`;
//! - [`ddim_invert`]: `ddim_loop`, deterministic DDIM run backwards with the prompt only
//!   (guidance 1), each step `next_step` ([`ddim_next_step`]);
//! - [`null_text_optimization`]: per denoising step `i`, Adam on the unconditional embedding
//!   (lr `1e-2 * (1 - i / 100)`, torch defaults betas 0.9 / 0.999, eps 1e-8) minimising
//!   `mse(DDIM step of the CFG prediction, inverted latent of the previous level)`, at most
//!   `iters` iterations, stopping early once the loss (of the iterate before the update, read
//!   back asynchronously) is below `1e-5 + i * 2e-5`, exactly as the notebook's
//!   `null_optimization`; then one CFG step with the optimised embedding advances the latent.
//!
//! Adam runs on the device (f32); nothing is read back except the scalar loss for early stop.
//! The gradient's UNet pass is activation-checkpointed ([`null_text_loss_and_grad`]), so the
//! memory of a step is about one forward pass, not a whole backward graph.

use burn::tensor::Tensor;

use super::{SuppressError, read_f32};
use crate::error::Error;
use crate::models::UNetCapture;
use crate::pipeline::StableDiffusion;
use crate::pipeline::denoise::guide;
use crate::schedulers::config::{ClassOptions, PredictionType};
use crate::schedulers::{Overrides, Scheduler, SchedulerKind, create};

/// Settings of null-text inversion (the reference's defaults). Steps and guidance are the
/// edit's ([`crate::pipeline::GenerateParams`]).
#[derive(Clone, Debug, PartialEq)]
pub struct InversionParams {
    /// Adam iterations per step at most (`num_inner_steps`, 10); 0 keeps the negative prompt.
    pub null_text_iters: usize,
    /// Base learning rate (1e-2; step `i` uses `lr * (1 - i / 100)`).
    pub lr: f64,
    /// Early-stop threshold at step 0 (`epsilon`, 1e-5; step `i` adds `i * 2e-5`).
    pub early_stop: f64,
}

impl Default for InversionParams {
    fn default() -> Self {
        Self { null_text_iters: 10, lr: 1e-2, early_stop: 1e-5 }
    }
}

/// `(vae.encode(pixels).latent_dist.mean - shift_factor) * scaling_factor`.
///
/// # Shapes
/// - `pixels`: `[N, 3, H, W]` in [-1, 1]; output `[N, C, H/8, W/8]`
pub fn encode_image(sd: &StableDiffusion, pixels: Tensor<4>) -> Tensor<4> {
    (sd.vae.encode(pixels).mean - sd.vae.shift_factor) * sd.vae.scaling_factor
}

/// A DDIM scheduler from the model's config (the inversion is DDIM-specific), set to `steps`.
pub fn ddim_scheduler(sd: &StableDiffusion, overrides: &Overrides, steps: usize) -> Result<Box<dyn Scheduler>, Error> {
    let mut s = create(SchedulerKind::Ddim, &sd.scheduler_config, overrides)?;
    s.set_timesteps(steps)?;
    Ok(s)
}

/// `(x0, eps)` from a model output at cumulative alpha `a`.
fn x0_eps(pt: PredictionType, out: Tensor<4>, x: Tensor<4>, a: f64) -> (Tensor<4>, Tensor<4>) {
    let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
    match pt {
        PredictionType::Epsilon => ((x - out.clone() * sb) / sa, out),
        PredictionType::Sample => (out.clone(), (x - out * sa) / sb),
        PredictionType::VPrediction => (x.clone() * sa - out.clone() * sb, out * sa + x * sb),
    }
}

/// `NullInversion.next_step`: from `sample` at the level before `timestep` to `timestep`
/// (`timestep - T/S` uses the final alpha when negative, as the reference).
pub fn ddim_next_step(sched: &dyn Scheduler, model_output: Tensor<4>, timestep: f64, sample: Tensor<4>) -> Tensor<4> {
    let cfg = sched.config();
    let acp = sched.alphas_cumprod();
    let nt = cfg.num_train_timesteps;
    let final_alpha = match &cfg.options {
        ClassOptions::Ddim(o) if o.set_alpha_to_one => 1.0,
        _ => acp[0],
    };
    let next = (timestep as usize).min(nt - 1);
    let cur = next as i64 - (nt / sched.timesteps().len().max(1)) as i64;
    let a_t = if cur >= 0 { acp[(cur as usize).min(nt - 1)] } else { final_alpha };
    let a_next = acp[next];
    let (x0, eps) = x0_eps(cfg.prediction_type, model_output, sample, a_t);
    x0 * a_next.sqrt() + eps * (1.0 - a_next).sqrt()
}

/// `ddim_loop`: `[x_0, x_1, ..., x_S]`, `x_{k+1} = next_step(unet(x_k, t, cond), t, x_k)` with
/// `t = timesteps[S - 1 - k]`.
///
/// # Shapes
/// - `latent`: `[N, C, h, w]`, `cond`: `[N, 77, D]`
pub fn ddim_invert(sd: &StableDiffusion, sched: &dyn Scheduler, latent: Tensor<4>, cond: Tensor<3>) -> Vec<Tensor<4>> {
    let ts = sched.timesteps().to_vec();
    let mut all = vec![latent.clone()];
    let mut x = latent;
    for (k, &t) in ts.iter().rev().enumerate() {
        let input = sched.scale_model_input(x.clone(), ts.len() - 1 - k);
        let eps = sd.unet.forward(input, &[t], cond.clone(), &mut UNetCapture::none());
        x = ddim_next_step(sched, eps, t, x);
        all.push(x.clone());
    }
    all
}

/// Loss `mse(DDIM step(CFG prediction), target)` of one null-text iteration at step `step` and
/// its gradient with respect to the unconditional embedding `u`. The UNet pass is activation-
/// checkpointed ([`crate::models::UNetTape`]): the gradient only flows into the text
/// embedding, so at most one module's activations exist at once (the same numbers as plain
/// autodiff through [`crate::models::UNet2DConditionModel::forward`], up to summation order).
///
/// # Shapes
/// - `latent`, `target`, `eps_c`: `[N, C, h, w]` (`eps_c`: the conditional prediction),
///   `u`: `[N, 77, D]`; returns `[1]` and `[N, 77, D]` (no graph)
#[allow(clippy::too_many_arguments)]
pub fn null_text_loss_and_grad(
    sd: &StableDiffusion,
    sched: &mut dyn Scheduler,
    step: usize,
    latent: Tensor<4>,
    target: Tensor<4>,
    eps_c: Tensor<4>,
    u: Tensor<3>,
    guidance: f64,
) -> (Tensor<1>, Tensor<3>) {
    let t = sched.timesteps()[step];
    let input = sched.scale_model_input(latent.clone(), step);
    let (eps_u, tape) = sd.unet.forward_checkpointed(input, &[t], u.clone());
    let leaf = eps_u.autodiff().require_grad();
    let eps = leaf.clone() + (eps_c.autodiff() - leaf.clone()) * guidance;
    let rec = sched.step(eps, step, latent.autodiff(), None).prev_sample;
    let d = rec - target.clone().autodiff();
    let loss = (d.clone() * d).mean();
    let grads = loss.backward();
    let g_out = leaf.grad(&grads).unwrap_or_else(|| target.zeros_like());
    (loss.inner(), tape.backward_ehs(g_out))
}

/// What null-text optimisation found.
#[derive(Clone, Debug)]
pub struct NullText {
    /// `[N, 77, D]` per denoising step: the optimised unconditional embedding.
    pub uncond: Vec<Tensor<3>>,
    /// Adam iterations run per step (early stop makes them fewer than the maximum).
    pub iterations: Vec<usize>,
    /// Last loss read back per step (`NaN` when no iteration ran).
    pub losses: Vec<f32>,
}

/// `null_optimization` over the inverted `latents` (`[x_0..x_S]` of [`ddim_invert`]), starting
/// from `uncond` (the negative prompt's embedding), for classifier-free guidance scale
/// `guidance`. `on_step(done, total)` after each denoising
/// step; returning false cancels.
///
/// # Shapes
/// - `latents[k]`: `[N, C, h, w]`, `uncond` / `cond`: `[N, 77, D]`
#[allow(clippy::too_many_arguments)]
pub async fn null_text_optimization(
    sd: &StableDiffusion,
    sched: &mut dyn Scheduler,
    latents: &[Tensor<4>],
    uncond: Tensor<3>,
    cond: Tensor<3>,
    guidance: f64,
    params: &InversionParams,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<NullText, Error> {
    let ts = sched.timesteps().to_vec();
    let s = ts.len();
    if latents.len() != s + 1 {
        return Err(SuppressError::UncondSteps { given: latents.len(), steps: s + 1 }.into());
    }
    let (b1, b2, eps_adam) = (0.9f64, 0.999f64, 1e-8f64);
    let mut u = uncond;
    let mut latent = latents[s].clone();
    let mut out = NullText { uncond: Vec::with_capacity(s), iterations: Vec::with_capacity(s), losses: Vec::with_capacity(s) };
    for (i, &t) in ts.iter().enumerate() {
        let lr = params.lr * (1.0 - i as f64 / 100.0);
        let target = latents[s - 1 - i].clone();
        let input = sched.scale_model_input(latent.clone(), i);
        let eps_c = sd.unet.forward(input.clone(), &[t], cond.clone(), &mut UNetCapture::none());
        let (mut m, mut v) = (u.zeros_like(), u.zeros_like());
        let (mut done, mut last) = (0, f32::NAN);
        for j in 0..params.null_text_iters {
            let (loss, g) = null_text_loss_and_grad(sd, sched, i, latent.clone(), target.clone(), eps_c.clone(), u.clone(), guidance);
            // torch.optim.Adam (weight_decay 0), step j + 1
            let k = (j + 1) as i32;
            m = m * b1 + g.clone() * (1.0 - b1);
            v = v * b2 + g.clone() * g * (1.0 - b2);
            let m_hat = m.clone() / (1.0 - b1.powi(k));
            let v_hat = v.clone() / (1.0 - b2.powi(k));
            u = u - m_hat / (v_hat.sqrt() + eps_adam) * lr;
            done = j + 1;
            last = read_f32(loss).await?.first().copied().unwrap_or(f32::NAN);
            if (last as f64) < params.early_stop + i as f64 * 2e-5 {
                break;
            }
        }
        out.uncond.push(u.clone());
        out.iterations.push(done);
        out.losses.push(last);
        // advance with the optimised embedding: one batched CFG step
        let eps = guide(sd.unet.forward(Tensor::cat(vec![input.clone(), input], 0), &[t], Tensor::cat(vec![u.clone(), cond.clone()], 0), &mut UNetCapture::none()), guidance);
        latent = sched.step(eps, i, latent, None).prev_sample;
        if !on_step(i + 1, s) {
            return Err(Error::Cancelled);
        }
    }
    Ok(out)
}
