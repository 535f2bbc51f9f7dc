//! Port of diffusers' `EulerAncestralDiscreteScheduler`
//! (`schedulers/scheduling_euler_ancestral_discrete.py`, k-diffusion's `sample_euler_ancestral`):
//! an Euler step down to `sigma_down`, then fresh noise scaled by `sigma_up`. The noise is a
//! caller-given tensor, so runs are reproducible with any RNG.

use burn::tensor::Tensor;

use super::config::{ClassOptions, EulerAncestralOptions, ResolvedConfig};
use super::euler_discrete::{sigma_family_tables, sigma_family_timesteps};
use super::schedule::{self, f32r};
use super::{Scheduler, SchedulerError, StepOutput, check_steps, sigma_add_noise, sigma_init_noise, sigma_input_scale, sigma_pred_original};

/// `EulerAncestralDiscreteScheduler`. Default `timestep_spacing` linspace. Needs noise.
#[derive(Clone, Debug)]
pub struct EulerAncestralDiscreteScheduler {
    config: ResolvedConfig,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    train_sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::EulerAncestral`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::EulerAncestral(EulerAncestralOptions { rescale_betas_zero_snr }) = config.options else {
            panic!("EulerAncestralDiscreteScheduler needs EulerAncestral options")
        };
        let (betas, alphas_cumprod, train_sigmas) = sigma_family_tables(&config, rescale_betas_zero_snr);
        Self { config, betas, alphas_cumprod, train_sigmas, timesteps: vec![], sigmas: vec![] }
    }

    /// `(sigma_up, sigma_down)` for the step from `sigma_from` to `sigma_to` (float32 like diffusers):
    /// `sigma_up = sqrt(to^2 (from^2 - to^2) / from^2)`, `sigma_down = sqrt(to^2 - up^2)`.
    pub fn ancestral_sigmas(sigma_from: f64, sigma_to: f64) -> (f64, f64) {
        let (from2, to2) = (f32r(sigma_from * sigma_from), f32r(sigma_to * sigma_to));
        let up = f32r(f32r(f32r(to2 * f32r(from2 - to2)) / from2).sqrt());
        let down = f32r(f32r(to2 - f32r(up * up)).max(0.0).sqrt());
        (up, down)
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        check_steps(n, self.config.num_train_timesteps)?;
        let ts = sigma_family_timesteps(&self.config, n, true);
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| f32r(schedule::interp(t, &self.train_sigmas))).collect();
        sigmas.push(0.0);
        self.sigmas = sigmas;
        self.timesteps = ts.into_iter().map(f32r).collect();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        let sigmas = if self.sigmas.is_empty() { &self.train_sigmas } else { &self.sigmas };
        sigma_init_noise(sigmas, self.config.timestep_spacing)
    }

    fn model_input_scale(&self, step_index: usize) -> f64 {
        sigma_input_scale(self.sigmas[step_index])
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> StepOutput {
        let sigma = self.sigmas[step_index];
        // 1. predicted x0
        let x0 = sigma_pred_original(self.config.prediction_type, model_output, sample.clone(), sigma);
        // 2. split the step into a deterministic part (to sigma_down) and fresh noise (sigma_up)
        let (sigma_up, sigma_down) = Self::ancestral_sigmas(sigma, self.sigmas[step_index + 1]);
        let derivative = (sample.clone() - x0.clone()).div_scalar(sigma);
        let dt = f32r(sigma_down - sigma);
        let noise = noise.expect("EulerAncestralDiscreteScheduler needs a noise tensor in step()");
        let prev = sample + derivative.mul_scalar(dt) + noise.mul_scalar(sigma_up);
        StepOutput { prev_sample: prev, pred_original_sample: Some(x0) }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, timestep: f64) -> Tensor<4> {
        sigma_add_noise(&self.timesteps, &self.sigmas, &self.train_sigmas, original, noise, timestep)
    }

    fn betas(&self) -> &[f64] {
        &self.betas
    }

    fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    fn config(&self) -> &ResolvedConfig {
        &self.config
    }

    fn name(&self) -> &'static str {
        "EulerAncestralDiscreteScheduler"
    }
}
