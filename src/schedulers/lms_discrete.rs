//! Port of diffusers' `LMSDiscreteScheduler` (`schedulers/scheduling_lms_discrete.py`): linear
//! multistep (order 4) on the sigma schedule. diffusers integrates each Lagrange basis polynomial
//! with `scipy.integrate.quad`; the integrand is a polynomial of degree <= 3, so here it is
//! integrated exactly with 3-point Gauss-Legendre. Supports `use_karras_sigmas`.

use burn::tensor::Tensor;

use super::config::{ClassOptions, LmsOptions, ResolvedConfig};
use super::euler_discrete::{sigma_family_tables, sigma_family_timesteps};
use super::schedule::{self, f32r};
use super::{Scheduler, SchedulerError, StepOutput, check_steps, sigma_add_noise, sigma_init_noise, sigma_input_scale, sigma_pred_original};

/// The multistep order diffusers' `step` uses by default.
pub const LMS_ORDER: usize = 4;

/// `LMSDiscreteScheduler`. Default `timestep_spacing` linspace.
#[derive(Clone, Debug)]
pub struct LMSDiscreteScheduler {
    config: ResolvedConfig,
    opts: LmsOptions,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    train_sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// The last `LMS_ORDER` derivatives `(x - x0) / sigma`, oldest first.
    derivatives: Vec<Tensor<4>>,
}

impl LMSDiscreteScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::Lms`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::Lms(opts) = config.options.clone() else { panic!("LMSDiscreteScheduler needs LMS options") };
        let (betas, alphas_cumprod, train_sigmas) = sigma_family_tables(&config, false);
        Self { config, opts, betas, alphas_cumprod, train_sigmas, timesteps: vec![], sigmas: vec![], derivatives: vec![] }
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
    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        check_steps(n, self.config.num_train_timesteps)?;
        // LMS keeps float64 timesteps for the sigma lookup
        let mut ts = sigma_family_timesteps(&self.config, n, false);
        let table = &self.train_sigmas;
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| schedule::interp(t, table)).collect();
        if self.opts.use_karras_sigmas {
            sigmas = schedule::karras_sigmas(sigmas[sigmas.len() - 1], sigmas[0], n);
            let log_sigmas = schedule::log_table(table);
            ts = sigmas.iter().map(|&s| schedule::sigma_to_t(s, &log_sigmas)).collect();
        }
        sigmas.push(0.0);
        self.sigmas = sigmas.into_iter().map(f32r).collect();
        self.timesteps = ts.into_iter().map(f32r).collect();
        self.derivatives.clear();
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

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> StepOutput {
        let sigma = self.sigmas[step_index];
        // 1. predicted x0
        let x0 = sigma_pred_original(self.config.prediction_type, model_output, sample.clone(), sigma);
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
            let term = d.clone().mul_scalar(Self::lms_coefficient(&self.sigmas, order, step_index, k));
            update = Some(match update {
                Some(u) => u + term,
                None => term,
            });
        }
        let prev = sample + update.expect("at least one derivative");
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

    fn keeps_history(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "LMSDiscreteScheduler"
    }
}
