//! The one denoising loop every job shares (diffusers' `__call__` steps 3-7): checks of the
//! parameters, the scheduler set to its steps, the initial latents, classifier-free guidance,
//! and [`Denoise`], the step-by-step run that plain generation ([`super::Txt2Img`]),
//! SuppressEOT, photo edits and heatmap capture implement, with [`run_to_end`] for progress and
//! cancel. The CLI runs it to the end; the browser calls `step` from the worker.

use std::future::Future;

use burn::tensor::Tensor;

use super::rng::NoiseRng;
use super::{GenerateParams, StableDiffusion};
use crate::error::{Error, InputError};
use crate::schedulers::{Scheduler, create};

/// A run advanced one scheduler step at a time.
pub trait Denoise {
    /// Number of scheduler steps (PNDM may have one more than requested).
    fn num_steps(&self) -> usize;
    /// Steps done so far.
    fn steps_done(&self) -> usize;
    /// Current latents `[B, C, h, w]`.
    fn latents(&self) -> Tensor<4>;
    /// Runs the next step.
    fn step(&mut self, sd: &StableDiffusion) -> impl Future<Output = Result<(), Error>>;
    /// True after the last step.
    fn is_done(&self) -> bool {
        self.steps_done() >= self.num_steps()
    }
}

/// Runs `run` to its end. `on_step(done, total, latents)` after each step; returning `false`
/// cancels ([`Error::Cancelled`]).
pub async fn run_to_end<R: Denoise>(run: &mut R, sd: &StableDiffusion, on_step: &mut dyn FnMut(usize, usize, &Tensor<4>) -> bool) -> Result<(), Error> {
    let total = run.num_steps();
    while !run.is_done() {
        run.step(sd).await?;
        if !on_step(run.steps_done(), total, &run.latents()) {
            return Err(Error::Cancelled);
        }
    }
    Ok(())
}

impl GenerateParams {
    /// Checks the parameters against the model: size a positive multiple of the VAE factor, at
    /// least one step and one image, finite guidance.
    pub fn validate(&self, sd: &StableDiffusion) -> Result<(), InputError> {
        let f = sd.vae_scale_factor();
        if self.width == 0 || self.height == 0 || !self.width.is_multiple_of(f) || !self.height.is_multiple_of(f) {
            return Err(InputError::Size { multiple: f, width: self.width, height: self.height });
        }
        validate_counts(self.steps, self.num_images, self.guidance)
    }

    /// The latent shape `[N, C, H/8, W/8]` of this run.
    pub fn latent_shape(&self, sd: &StableDiffusion) -> [usize; 4] {
        let f = sd.vae_scale_factor();
        [self.num_images, sd.latent_channels(), self.height / f, self.width / f]
    }
}

/// The checks every run's settings share: at least one step and one image, finite guidance.
pub fn validate_counts(steps: usize, num_images: usize, guidance: f64) -> Result<(), InputError> {
    if steps == 0 {
        return Err(InputError::setting("steps", "must be at least 1"));
    }
    if num_images == 0 {
        return Err(InputError::setting("num_images", "must be at least 1"));
    }
    if !guidance.is_finite() {
        return Err(InputError::setting("guidance", format!("must be a finite number (got {guidance})")));
    }
    Ok(())
}

/// Validates `p` and creates its scheduler (`p.scheduler`, else the model's own) set to `p.steps`.
pub fn prepare_scheduler(sd: &StableDiffusion, p: &GenerateParams) -> Result<Box<dyn Scheduler>, Error> {
    p.validate(sd)?;
    let kind = p.scheduler.unwrap_or(sd.default_scheduler);
    let mut scheduler = create(kind, &sd.scheduler_config, &p.overrides)?;
    scheduler.set_timesteps(p.steps)?;
    Ok(scheduler)
}

/// The initial latents `[N, C, H/8, W/8]` before `init_noise_sigma` scaling: `latents` (checked
/// against the run's shape; diffusers' `latents=`) or drawn from `rng`.
pub fn initial_latents(sd: &StableDiffusion, p: &GenerateParams, latents: Option<Tensor<4>>, rng: &mut NoiseRng) -> Result<Tensor<4>, InputError> {
    let shape = p.latent_shape(sd);
    match latents {
        Some(l) if l.dims() != shape => Err(InputError::LatentShape { expected: shape.to_vec(), actual: l.dims().to_vec() }),
        Some(l) => Ok(l),
        None => Ok(rng.randn(shape, &sd.device())),
    }
}

/// Classifier-free guidance of a batch `[uncond..., cond...]`: `uncond + g * (cond - uncond)`.
pub fn guide(eps: Tensor<4>, guidance: f64) -> Tensor<4> {
    let mut halves = eps.chunk(2, 0).into_iter();
    let (uncond, cond) = (halves.next().expect("uncond half"), halves.next().expect("cond half"));
    uncond.clone() + (cond - uncond) * guidance
}

/// `[uncond x N, cond x N]` (with guidance) or `[cond x N]` context for `p`'s prompts: `[2N or N, 77, D]`.
pub fn encode_context(sd: &StableDiffusion, p: &GenerateParams) -> Result<Tensor<3>, Error> {
    let n = p.num_images;
    if p.do_cfg() {
        let (_, out) = sd.prompt.encode(&[&p.negative_prompt, &p.prompt], false)?;
        let [_, s, d] = out.last_hidden_state.dims();
        let uncond = out.last_hidden_state.clone().slice([0..1, 0..s, 0..d]).repeat_dim(0, n);
        let cond = out.last_hidden_state.slice([1..2, 0..s, 0..d]).repeat_dim(0, n);
        Ok(Tensor::cat(vec![uncond, cond], 0))
    } else {
        let (_, out) = sd.prompt.encode(&[&p.prompt], false)?;
        Ok(out.last_hidden_state.repeat_dim(0, n))
    }
}
