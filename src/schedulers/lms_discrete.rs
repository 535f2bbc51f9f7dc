//! Port of diffusers' `LMSDiscreteScheduler` (`schedulers/scheduling_lms_discrete.py`): linear
//! multistep (order 4) on the sigma schedule. diffusers integrates each Lagrange basis polynomial
//! with `scipy.integrate.quad`; the integrand is a polynomial of degree <= 3, so here it is
//! integrated exactly with 3-point Gauss-Legendre. Supports `use_karras_sigmas`.

use burn::tensor::Tensor;

use super::config::{ClassOptions, LmsOptions, ResolvedConfig};
use super::schedule::{self, Parameterization, ScheduleState, f32r};
use super::{Scheduler, SchedulerError, StepOutput, sigma_pred_original};

/// The multistep order diffusers' `step` uses by default.
pub const LMS_ORDER: usize = 4;

/// `LMSDiscreteScheduler`. Default `timestep_spacing` linspace.
#[derive(Clone, Debug)]
pub struct LMSDiscreteScheduler {
    state: ScheduleState,
    opts: LmsOptions,
    /// The last `LMS_ORDER` derivatives `(x - x0) / sigma`, oldest first.
    derivatives: Vec<Tensor<4>>,
}

impl LMSDiscreteScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::Lms`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::Lms(opts) = config.options.clone() else { panic!("LMSDiscreteScheduler needs LMS options") };
        Self { state: ScheduleState::new(config, Parameterization::Sigmas, false), opts, derivatives: vec![] }
    }

    /// `get_lms_coefficient`: the integral over `[sigmas[t], sigmas[t + 1]]` of the Lagrange basis
    /// polynomial through `sigmas[t], sigmas[t - 1], ..., sigmas[t - order + 1]` that is 1 at
    /// `sigmas[t - current_order]`.
    pub fn lms_coefficient(sigmas: &[f64], order: usize, t: usize, current_order: usize) -> f64 {
        let basis = |tau: f64| {
            (0..order).filter(|&k| k != current_order).map(|k| (tau - sigmas[t - k]) / (sigmas[t - current_order] - sigmas[t - k])).product::<f64>()
        };
        schedule::integrate_poly5(basis, sigmas[t], sigmas[t + 1])
    }
}

impl Scheduler for LMSDiscreteScheduler {
    fn state(&self) -> &ScheduleState {
        &self.state
    }

    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        self.state.check_steps(n)?;
        // LMS keeps float64 timesteps for the sigma lookup
        let mut ts = self.state.spaced_timesteps(n, |t| t);
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| schedule::interp(t, &self.state.train_sigmas)).collect();
        if self.opts.use_karras_sigmas {
            sigmas = schedule::karras_sigmas(sigmas[sigmas.len() - 1], sigmas[0], n);
            ts = self.state.sigmas_to_timesteps(&sigmas);
        }
        sigmas.push(0.0);
        self.state.sigmas = sigmas.into_iter().map(f32r).collect();
        self.state.timesteps = ts.into_iter().map(f32r).collect();
        self.derivatives.clear();
        Ok(())
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> StepOutput {
        let sigma = self.state.sigmas[step_index];
        // 1. predicted x0
        let x0 = sigma_pred_original(self.state.config.prediction_type, model_output, sample.clone(), sigma);
        // 2. ODE derivative, kept for the multistep
        let derivative = (sample.clone() - x0.clone()).div_scalar(sigma);
        self.derivatives.push(derivative);
        if self.derivatives.len() > LMS_ORDER {
            self.derivatives.remove(0);
        }
        // 3. linear multistep coefficients, 4. x_{t-1} = x + sum_k coeff_k * derivative_{-k}
        let order = (step_index + 1).min(LMS_ORDER);
        let mut update: Option<Tensor<4>> = None;
        for (k, d) in (0..order).zip(self.derivatives.iter().rev()) {
            let term = d.clone().mul_scalar(Self::lms_coefficient(&self.state.sigmas, order, step_index, k));
            update = Some(match update {
                Some(u) => u + term,
                None => term,
            });
        }
        let prev = sample + update.expect("at least one derivative");
        StepOutput { prev_sample: prev, pred_original_sample: Some(x0) }
    }

    fn keeps_history(&self) -> bool {
        true
    }
}
