//! Port of diffusers' `DDIMScheduler` (`schedulers/scheduling_ddim.py`, arXiv 2010.02502):
//! deterministic (eta = 0) or stochastic (eta > 0, with a caller-given noise tensor) DDIM steps
//! on integer timesteps, with `clip_sample`, `set_alpha_to_one` (the final "previous" alpha) and
//! `rescale_betas_zero_snr`.

use burn::tensor::Tensor;

use super::config::{ClassOptions, DdimOptions, PredictionType, ResolvedConfig};
use super::schedule::{Parameterization, ScheduleState};
use super::{Scheduler, SchedulerError, StepOutput};

/// `DDIMScheduler`. Default `timestep_spacing` leading; `init_noise_sigma` 1.
#[derive(Clone, Debug)]
pub struct DDIMScheduler {
    state: ScheduleState,
    opts: DdimOptions,
    /// `alphas_cumprod` of the step after the last: 1 with `set_alpha_to_one`, else `acp[0]`.
    final_alpha_cumprod: f64,
    num_inference_steps: usize,
}

impl DDIMScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::Ddim`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::Ddim(opts) = config.options.clone() else { panic!("DDIMScheduler needs DDIM options") };
        let state = ScheduleState::new(config, Parameterization::Alphas, opts.rescale_betas_zero_snr);
        let final_alpha_cumprod = state.final_alpha_cumprod(opts.set_alpha_to_one);
        Self { state, opts, final_alpha_cumprod, num_inference_steps: 0 }
    }

    /// `(alpha_prod_t, alpha_prod_t_prev)` for the step at `timestep`, where the previous
    /// timestep is `timestep - num_train_timesteps // num_inference_steps`.
    fn alphas(&self, timestep: usize) -> (f64, f64) {
        let acp = &self.state.alphas_cumprod;
        let prev = timestep as i64 - (self.state.num_train_timesteps() / self.num_inference_steps) as i64;
        let a_prev = if prev >= 0 { acp[prev as usize] } else { self.final_alpha_cumprod };
        (acp[timestep], a_prev)
    }
}

impl Scheduler for DDIMScheduler {
    fn state(&self) -> &ScheduleState {
        &self.state
    }

    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        self.state.check_steps(n)?;
        self.state.timesteps = self.state.spaced_timesteps(n, f64::round_ties_even);
        self.state.check_timesteps_fit(self.state.timesteps.iter().copied())?;
        self.num_inference_steps = n;
        Ok(())
    }

    fn needs_noise(&self) -> bool {
        self.opts.eta > 0.0
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> StepOutput {
        // 1. previous step value and 2. alphas, betas
        let t = self.state.timesteps[step_index] as usize;
        let (a_t, a_prev) = self.alphas(t);
        let b_t = 1.0 - a_t;
        // 3. predicted original sample and noise (formula (12) of the DDIM paper)
        let (mut x0, eps) = match self.state.config.prediction_type {
            PredictionType::Epsilon => ((sample.clone() - model_output.clone().mul_scalar(b_t.sqrt())).div_scalar(a_t.sqrt()), model_output),
            PredictionType::Sample => {
                let eps = (sample - model_output.clone().mul_scalar(a_t.sqrt())).div_scalar(b_t.sqrt());
                (model_output, eps)
            }
            PredictionType::VPrediction => (
                sample.clone().mul_scalar(a_t.sqrt()) - model_output.clone().mul_scalar(b_t.sqrt()),
                model_output.mul_scalar(a_t.sqrt()) + sample.mul_scalar(b_t.sqrt()),
            ),
        };
        // 4. clip x0
        if self.opts.clip_sample {
            let r = self.opts.clip_sample_range;
            x0 = x0.clamp(-r, r);
        }
        // 5. sigma_t(eta), formula (16)
        let variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev);
        let std_dev = self.opts.eta * variance.sqrt();
        // 6. direction pointing to x_t, 7. x_{t-1}
        let direction = eps.mul_scalar((1.0 - a_prev - std_dev * std_dev).sqrt());
        let mut prev = x0.clone().mul_scalar(a_prev.sqrt()) + direction;
        if self.opts.eta > 0.0 {
            let noise = noise.expect("DDIMScheduler with eta > 0 needs a noise tensor in step()");
            prev = prev + noise.mul_scalar(std_dev);
        }
        StepOutput { prev_sample: prev, pred_original_sample: Some(x0) }
    }
}
