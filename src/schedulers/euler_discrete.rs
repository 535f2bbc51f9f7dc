//! Port of diffusers' `EulerDiscreteScheduler` (`schedulers/scheduling_euler_discrete.py`,
//! Algorithm 2 of Karras et al. 2022 without churn): float timesteps, sigmas interpolated from
//! the training table (`interpolation_type` linear or log_linear) or the Karras schedule
//! (`use_karras_sigmas`), `final_sigmas_type` zero / sigma_min, `rescale_betas_zero_snr`.

use burn::tensor::Tensor;

use super::config::{ClassOptions, EulerOptions, FinalSigmasType, InterpolationType, ResolvedConfig, TimestepSpacing};
use super::schedule::{self, f32r, np_linspace};
use super::{Scheduler, SchedulerError, StepOutput, check_steps, sigma_add_noise, sigma_init_noise, sigma_input_scale, sigma_pred_original};

/// Inference timesteps of the Euler family before the sigma lookup (f64 here; diffusers holds
/// them as float32 for Euler / Euler ancestral and float64 for LMS, see `f32_timesteps`).
pub(crate) fn sigma_family_timesteps(config: &ResolvedConfig, n: usize, f32_timesteps: bool) -> Vec<f64> {
    let nt = config.num_train_timesteps;
    let round = |t: f64| if f32_timesteps { f32r(t) } else { t };
    let ts: Vec<f64> = match config.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (nt - 1) as f64, n).into_iter().rev().map(round).collect(),
        TimestepSpacing::Leading => schedule::leading(nt, n, config.steps_offset),
        TimestepSpacing::Trailing => schedule::trailing(nt as f64, nt, n),
    };
    ts
}

/// Training tables of the Euler family: betas, alphas_cumprod (last set to 2^-24 under
/// `rescale_betas_zero_snr`, so the first sigma is finite) and the float32 sigma table.
pub(crate) fn sigma_family_tables(config: &ResolvedConfig, rescale: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let betas = schedule::betas(config, rescale);
    let mut acp = schedule::alphas_cumprod(&betas);
    if rescale {
        *acp.last_mut().expect("non-empty") = 2f64.powi(-24);
    }
    let sigmas = schedule::sigma_table(&acp);
    (betas, acp, sigmas)
}

/// `EulerDiscreteScheduler`. Default `timestep_spacing` linspace.
#[derive(Clone, Debug)]
pub struct EulerDiscreteScheduler {
    config: ResolvedConfig,
    opts: EulerOptions,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// Float32 sigma per training timestep.
    train_sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    /// `timesteps.len() + 1` sigmas (log_linear: one more, as in diffusers).
    sigmas: Vec<f64>,
}

impl EulerDiscreteScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::Euler`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::Euler(opts) = config.options.clone() else { panic!("EulerDiscreteScheduler needs Euler options") };
        let (betas, alphas_cumprod, train_sigmas) = sigma_family_tables(&config, opts.rescale_betas_zero_snr);
        Self { config, opts, betas, alphas_cumprod, train_sigmas, timesteps: vec![], sigmas: vec![] }
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        check_steps(n, self.config.num_train_timesteps)?;
        let mut ts = sigma_family_timesteps(&self.config, n, true);
        let table = &self.train_sigmas;
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
            let log_sigmas = schedule::log_table(table);
            ts = sigmas.iter().map(|&s| schedule::sigma_to_t(s, &log_sigmas)).collect();
        }
        sigmas.push(match self.opts.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => table[0],
        });
        self.sigmas = sigmas.into_iter().map(f32r).collect();
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

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> StepOutput {
        let sigma = self.sigmas[step_index];
        // 1. predicted x0 from the sigma-scaled prediction
        let x0 = sigma_pred_original(self.config.prediction_type, model_output, sample.clone(), sigma);
        // 2. ODE derivative and Euler step to the next sigma
        let derivative = (sample.clone() - x0.clone()).div_scalar(sigma);
        let dt = f32r(self.sigmas[step_index + 1] - sigma);
        let prev = sample + derivative.mul_scalar(dt);
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
        "EulerDiscreteScheduler"
    }
}
