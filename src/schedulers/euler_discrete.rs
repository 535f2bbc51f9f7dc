//! Port of diffusers' `EulerDiscreteScheduler` (`schedulers/scheduling_euler_discrete.py`,
//! Algorithm 2 of Karras et al. 2022 without churn): float timesteps, sigmas interpolated from
//! the training table (`interpolation_type` linear or log_linear) or the Karras schedule
//! (`use_karras_sigmas`), `final_sigmas_type` zero / sigma_min, `rescale_betas_zero_snr`.

use burn::tensor::Tensor;

use super::config::{ClassOptions, EulerOptions, InterpolationType, ResolvedConfig};
use super::schedule::{self, Parameterization, ScheduleState, f32r};
use super::{Scheduler, SchedulerError, StepOutput, sigma_pred_original};

/// `EulerDiscreteScheduler`. Default `timestep_spacing` linspace.
#[derive(Clone, Debug)]
pub struct EulerDiscreteScheduler {
    state: ScheduleState,
    opts: EulerOptions,
}

impl EulerDiscreteScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::Euler`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::Euler(opts) = config.options.clone() else { panic!("EulerDiscreteScheduler needs Euler options") };
        Self { state: ScheduleState::new(config, Parameterization::Sigmas, opts.rescale_betas_zero_snr), opts }
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn state(&self) -> &ScheduleState {
        &self.state
    }

    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        self.state.check_steps(n)?;
        let mut ts = self.state.spaced_timesteps(n, f32r);
        let table = &self.state.train_sigmas;
        let mut sigmas: Vec<f64> = match self.opts.interpolation_type {
            InterpolationType::Linear => ts.iter().map(|&t| schedule::interp(t, table)).collect(),
            InterpolationType::LogLinear => {
                let (lo, hi) = (f32r(table[table.len() - 1].ln()), f32r(table[0].ln()));
                schedule::torch_linspace_f32(lo, hi, n + 1).into_iter().map(|l| f32r(l.exp())).collect()
            }
        };
        if self.opts.use_karras_sigmas {
            let sigma_min = self.opts.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = self.opts.sigma_max.unwrap_or(sigmas[0]);
            sigmas = schedule::karras_sigmas(sigma_min, sigma_max, n);
            ts = self.state.sigmas_to_timesteps(&sigmas);
        }
        sigmas.push(self.state.final_sigma(self.opts.final_sigmas_type));
        self.state.sigmas = sigmas.into_iter().map(f32r).collect();
        self.state.timesteps = ts.into_iter().map(f32r).collect();
        Ok(())
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> StepOutput {
        let sigmas = &self.state.sigmas;
        let sigma = sigmas[step_index];
        // 1. predicted x0 from the sigma-scaled prediction
        let x0 = sigma_pred_original(self.state.config.prediction_type, model_output, sample.clone(), sigma);
        // 2. ODE derivative and Euler step to the next sigma
        let derivative = (sample.clone() - x0.clone()).div_scalar(sigma);
        let dt = f32r(sigmas[step_index + 1] - sigma);
        let prev = sample + derivative.mul_scalar(dt);
        StepOutput { prev_sample: prev, pred_original_sample: Some(x0) }
    }
}
