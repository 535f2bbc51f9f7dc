//! Port of diffusers' `DPMSolverMultistepScheduler` (`schedulers/scheduling_dpmsolver_multistep.py`,
//! arXiv 2206.00927 and 2211.01095): multistep DPM-Solver++ (data prediction) or DPM-Solver
//! (noise prediction) of order 1-3, `solver_type` midpoint / heun, `lower_order_final`,
//! `euler_at_final`, `final_sigmas_type`, `use_karras_sigmas` (the "DPM++ 2M Karras" sampler),
//! `lambda_min_clipped`, `rescale_betas_zero_snr`. Integer timesteps; the step math runs on the
//! sigma schedule (`alpha_t = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha_t`).

use burn::tensor::Tensor;

use super::config::{
    AlgorithmType, BetaSchedule, ClassOptions, DpmSolverOptions, FinalSigmasType, PredictionType, ResolvedConfig, SolverType, TimestepSpacing,
};
use super::schedule::{self, Parameterization, ScheduleState, f32r, np_linspace, sigma_to_alpha_sigma_t};
use super::{Scheduler, SchedulerError, StepOutput, add_noise_ddpm};

/// `(alpha_t, sigma_t, lambda_t = log(alpha_t) - log(sigma_t))` of a sigma.
fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let (a, s) = sigma_to_alpha_sigma_t(sigma);
    (a, s, a.ln() - s.ln())
}

/// `DPMSolverMultistepScheduler`. Default `timestep_spacing` linspace; `init_noise_sigma` 1.
#[derive(Clone, Debug)]
pub struct DPMSolverMultistepScheduler {
    state: ScheduleState,
    opts: DpmSolverOptions,
    /// Float32 `log(alpha_t) - log(sigma_t)` per training timestep (for `lambda_min_clipped`).
    lambda_t: Vec<f64>,
    /// The last `solver_order` converted model outputs (oldest first).
    model_outputs: Vec<Option<Tensor<4>>>,
    lower_order_nums: usize,
}

impl DPMSolverMultistepScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::DpmSolverMultistep`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::DpmSolverMultistep(opts) = config.options.clone() else { panic!("DPMSolverMultistepScheduler needs DPM-Solver options") };
        let state = ScheduleState::new(config, Parameterization::AlphasWithSigmas, opts.rescale_betas_zero_snr);
        let lambda_t = state
            .alphas_cumprod
            .iter()
            .map(|&a| {
                let (alpha, sigma) = (f32r(a.sqrt()), f32r(f32r(1.0 - a).sqrt()));
                f32r(f32r(alpha.ln()) - f32r(sigma.ln()))
            })
            .collect();
        let model_outputs = vec![None; opts.solver_order];
        Self { state, opts, lambda_t, model_outputs, lower_order_nums: 0 }
    }

    /// Converts the model output to what the algorithm integrates: x0 for DPM-Solver++, epsilon
    /// for DPM-Solver.
    fn convert_model_output(&self, model_output: Tensor<4>, sample: Tensor<4>, sigma: f64) -> Tensor<4> {
        let (alpha_t, sigma_t) = sigma_to_alpha_sigma_t(sigma);
        match (self.opts.algorithm_type, self.state.config.prediction_type) {
            (AlgorithmType::DpmSolverPlusPlus, PredictionType::Epsilon) => (sample - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t),
            (AlgorithmType::DpmSolverPlusPlus, PredictionType::Sample) => model_output,
            (AlgorithmType::DpmSolverPlusPlus, PredictionType::VPrediction) => sample.mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t),
            (AlgorithmType::DpmSolver, PredictionType::Epsilon) => model_output,
            (AlgorithmType::DpmSolver, PredictionType::Sample) => (sample - model_output.mul_scalar(alpha_t)).div_scalar(sigma_t),
            (AlgorithmType::DpmSolver, PredictionType::VPrediction) => model_output.mul_scalar(alpha_t) + sample.mul_scalar(sigma_t),
        }
    }

    /// The `k`-th most recent converted output (0 = current).
    fn m(&self, k: usize) -> Tensor<4> {
        self.model_outputs[self.model_outputs.len() - 1 - k].clone().expect("multistep history")
    }

    /// First-order update (DDIM-equivalent) from `sigmas[i]` to `sigmas[i + 1]`.
    fn first_order(&self, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.state.sigmas[i + 1]);
        let (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(self.state.sigmas[i]);
        let h = lambda_t - lambda_s;
        let m0 = self.m(0);
        match self.opts.algorithm_type {
            AlgorithmType::DpmSolverPlusPlus => sample.mul_scalar(sigma_t / sigma_s) - m0.mul_scalar(alpha_t * ((-h).exp() - 1.0)),
            AlgorithmType::DpmSolver => sample.mul_scalar(alpha_t / alpha_s) - m0.mul_scalar(sigma_t * (h.exp() - 1.0)),
        }
    }

    /// Second-order multistep update using outputs at `sigmas[i]` and `sigmas[i - 1]`.
    fn second_order(&self, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.state.sigmas[i + 1]);
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.state.sigmas[i]);
        let (_, _, lambda_s1) = alpha_sigma_lambda(self.state.sigmas[i - 1]);
        let (m0, m1) = (self.m(0), self.m(1));
        let (h, h0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h0 / h;
        let d1 = (m0.clone() - m1).mul_scalar(1.0 / r0);
        let d0 = m0;
        match (self.opts.algorithm_type, self.opts.solver_type) {
            (AlgorithmType::DpmSolverPlusPlus, SolverType::Midpoint) => {
                let c = alpha_t * ((-h).exp() - 1.0);
                sample.mul_scalar(sigma_t / sigma_s0) - d0.mul_scalar(c) - d1.mul_scalar(0.5 * c)
            }
            (AlgorithmType::DpmSolverPlusPlus, SolverType::Heun) => {
                let c = alpha_t * ((-h).exp() - 1.0);
                sample.mul_scalar(sigma_t / sigma_s0) - d0.mul_scalar(c) + d1.mul_scalar(alpha_t * (((-h).exp() - 1.0) / h + 1.0))
            }
            (AlgorithmType::DpmSolver, SolverType::Midpoint) => {
                let c = sigma_t * (h.exp() - 1.0);
                sample.mul_scalar(alpha_t / alpha_s0) - d0.mul_scalar(c) - d1.mul_scalar(0.5 * c)
            }
            (AlgorithmType::DpmSolver, SolverType::Heun) => {
                let c = sigma_t * (h.exp() - 1.0);
                sample.mul_scalar(alpha_t / alpha_s0) - d0.mul_scalar(c) - d1.mul_scalar(sigma_t * ((h.exp() - 1.0) / h - 1.0))
            }
        }
    }

    /// Third-order multistep update using outputs at `sigmas[i]`, `[i - 1]` and `[i - 2]`.
    fn third_order(&self, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.state.sigmas[i + 1]);
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.state.sigmas[i]);
        let (_, _, lambda_s1) = alpha_sigma_lambda(self.state.sigmas[i - 1]);
        let (_, _, lambda_s2) = alpha_sigma_lambda(self.state.sigmas[i - 2]);
        let (m0, m1, m2) = (self.m(0), self.m(1), self.m(2));
        let (h, h0, h1) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
        let (r0, r1) = (h0 / h, h1 / h);
        let d1_0 = (m0.clone() - m1.clone()).mul_scalar(1.0 / r0);
        let d1_1 = (m1 - m2).mul_scalar(1.0 / r1);
        let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()).mul_scalar(r0 / (r0 + r1));
        let d2 = (d1_0 - d1_1).mul_scalar(1.0 / (r0 + r1));
        match self.opts.algorithm_type {
            AlgorithmType::DpmSolverPlusPlus => {
                let e = (-h).exp() - 1.0;
                sample.mul_scalar(sigma_t / sigma_s0) - m0.mul_scalar(alpha_t * e) + d1.mul_scalar(alpha_t * (e / h + 1.0))
                    - d2.mul_scalar(alpha_t * ((e + h) / (h * h) - 0.5))
            }
            AlgorithmType::DpmSolver => {
                let e = h.exp() - 1.0;
                sample.mul_scalar(alpha_t / alpha_s0)
                    - m0.mul_scalar(sigma_t * e)
                    - d1.mul_scalar(sigma_t * (e / h - 1.0))
                    - d2.mul_scalar(sigma_t * ((e - h) / (h * h) - 0.5))
            }
        }
    }
}

impl Scheduler for DPMSolverMultistepScheduler {
    fn state(&self) -> &ScheduleState {
        &self.state
    }

    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        let nt = self.state.num_train_timesteps();
        self.state.check_steps(n)?;
        // clip the smallest lambdas (cosine schedules): searchsorted(flip(lambda_t), lambda_min_clipped)
        let clipped_idx = self.lambda_t.iter().rev().take_while(|&&l| l < self.opts.lambda_min_clipped).count();
        let last_timestep = nt - clipped_idx;
        let mut ts: Vec<f64> = match self.state.config.timestep_spacing {
            TimestepSpacing::Linspace => {
                let mut v: Vec<f64> = np_linspace(0.0, last_timestep as f64 - 1.0, n + 1).into_iter().map(f64::round_ties_even).collect();
                v.reverse();
                v.pop();
                v
            }
            TimestepSpacing::Leading => {
                let ratio = last_timestep / (n + 1);
                (1..=n).rev().map(|i| (i * ratio + self.state.config.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => schedule::trailing(last_timestep as f64, nt, n),
        };
        let table = &self.state.train_sigmas;
        let mut sigmas: Vec<f64> = if self.opts.use_karras_sigmas {
            // in_sigmas = flip(table): sigma_min = table[0], sigma_max = table[last]
            let karras = schedule::karras_sigmas(table[0], table[table.len() - 1], n);
            let cosine = self.state.config.beta_schedule == BetaSchedule::SquaredcosCapV2;
            ts = self.state.sigmas_to_timesteps(&karras).into_iter().map(|t| if cosine { t.trunc() } else { t.round_ties_even() }).collect();
            karras
        } else {
            ts.iter().map(|&t| schedule::interp(t, table)).collect()
        };
        sigmas.push(self.state.final_sigma(self.opts.final_sigmas_type));
        self.state.sigmas = sigmas.into_iter().map(f32r).collect();
        self.state.timesteps = ts;
        self.model_outputs = vec![None; self.opts.solver_order];
        self.lower_order_nums = 0;
        Ok(())
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> StepOutput {
        let (i, len, o) = (step_index, self.state.timesteps.len(), &self.opts);
        // lower-order steps at the end improve stability for few steps
        let lower_order_final =
            i == len - 1 && (o.euler_at_final || (o.lower_order_final && len < 15) || o.final_sigmas_type == FinalSigmasType::Zero);
        let lower_order_second = i + 2 == len && o.lower_order_final && len < 15;
        let order = o.solver_order;

        let converted = self.convert_model_output(model_output, sample.clone(), self.state.sigmas[i]);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));

        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(i, sample)
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, sample)
        } else {
            self.third_order(i, sample)
        };
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        StepOutput { prev_sample: prev, pred_original_sample: None }
    }

    /// DDPM noising at `timestep`; for a schedule timestep the schedule's own sigma is used
    /// (they differ only under Karras sigmas), like diffusers' `add_noise`.
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, timestep: f64) -> Tensor<4> {
        let s = &self.state;
        let t = s.train_index(timestep);
        match schedule::index_for_timestep(&s.timesteps, timestep) {
            Some(idx) if self.opts.use_karras_sigmas => {
                let (alpha_t, sigma_t) = sigma_to_alpha_sigma_t(s.sigmas[idx]);
                original.mul_scalar(alpha_t) + noise.mul_scalar(sigma_t)
            }
            _ => add_noise_ddpm(&s.alphas_cumprod, original, noise, &[t]),
        }
    }

    fn keeps_history(&self) -> bool {
        true
    }
}
