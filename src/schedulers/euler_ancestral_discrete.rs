//! Port of diffusers' `EulerAncestralDiscreteScheduler`
//! (`schedulers/scheduling_euler_ancestral_discrete.py`, k-diffusion's `sample_euler_ancestral`):
//! an Euler step down to `sigma_down`, then fresh noise scaled by `sigma_up`. The noise is a
//! caller-given tensor, so runs are reproducible with any RNG.

use burn::tensor::Tensor;

use super::config::{ClassOptions, EulerAncestralOptions, ResolvedConfig};
use super::schedule::{self, Parameterization, ScheduleState, f32r};
use super::{Scheduler, SchedulerError, StepOutput, sigma_pred_original};

/// `EulerAncestralDiscreteScheduler`. Default `timestep_spacing` linspace. Needs noise.
#[derive(Clone, Debug)]
pub struct EulerAncestralDiscreteScheduler {
    state: ScheduleState,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::EulerAncestral`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::EulerAncestral(EulerAncestralOptions { rescale_betas_zero_snr }) = config.options else {
            panic!("EulerAncestralDiscreteScheduler needs EulerAncestral options")
        };
        Self { state: ScheduleState::new(config, Parameterization::Sigmas, rescale_betas_zero_snr) }
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
    fn state(&self) -> &ScheduleState {
        &self.state
    }

    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        self.state.check_steps(n)?;
        let ts = self.state.spaced_timesteps(n, f32r);
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| f32r(schedule::interp(t, &self.state.train_sigmas))).collect();
        sigmas.push(0.0);
        self.state.sigmas = sigmas;
        self.state.timesteps = ts.into_iter().map(f32r).collect();
        Ok(())
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> StepOutput {
        let sigmas = &self.state.sigmas;
        let sigma = sigmas[step_index];
        // 1. predicted x0
        let x0 = sigma_pred_original(self.state.config.prediction_type, model_output, sample.clone(), sigma);
        // 2. split the step into a deterministic part (to sigma_down) and fresh noise (sigma_up)
        let (sigma_up, sigma_down) = Self::ancestral_sigmas(sigma, sigmas[step_index + 1]);
        let derivative = (sample.clone() - x0.clone()).div_scalar(sigma);
        let dt = f32r(sigma_down - sigma);
        let noise = noise.expect("EulerAncestralDiscreteScheduler needs a noise tensor in step()");
        let prev = sample + derivative.mul_scalar(dt) + noise.mul_scalar(sigma_up);
        StepOutput { prev_sample: prev, pred_original_sample: Some(x0) }
    }
}
