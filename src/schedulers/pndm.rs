//! Port of diffusers' `PNDMScheduler` (`schedulers/scheduling_pndm.py`, arXiv 2202.09778):
//! pseudo linear multistep (PLMS) steps, preceded by 12 pseudo Runge-Kutta warm-up steps unless
//! `skip_prk_steps` (the Stable Diffusion setting). With `skip_prk_steps` the schedule repeats
//! its second timestep (n steps give n + 1 timesteps): the first two steps form one Heun-like
//! step from the same sample.

use burn::tensor::Tensor;

use super::config::{ClassOptions, PndmOptions, PredictionType, ResolvedConfig};
use super::schedule::{Parameterization, ScheduleState};
use super::{Scheduler, SchedulerError, StepOutput};

/// `PNDMScheduler` (`pndm_order` 4). Default `timestep_spacing` leading; `init_noise_sigma` 1.
#[derive(Clone, Debug)]
pub struct PNDMScheduler {
    state: ScheduleState,
    opts: PndmOptions,
    final_alpha_cumprod: f64,
    num_inference_steps: usize,
    /// The PRK part of the schedule (empty with `skip_prk_steps`).
    prk_timesteps: Vec<i64>,
    /// Multistep state: past model outputs (at most 4), the step counter, the sample the
    /// current multi-evaluation step started from, and the PRK running model output.
    ets: Vec<Tensor<4>>,
    counter: usize,
    cur_sample: Option<Tensor<4>>,
    cur_model_output: Option<Tensor<4>>,
}

impl PNDMScheduler {
    /// Builds the training tables. `config.options` must be [`ClassOptions::Pndm`].
    pub fn new(config: ResolvedConfig) -> Self {
        let ClassOptions::Pndm(opts) = config.options.clone() else { panic!("PNDMScheduler needs PNDM options") };
        let state = ScheduleState::new(config, Parameterization::Alphas, false);
        let final_alpha_cumprod = state.final_alpha_cumprod(opts.set_alpha_to_one);
        Self {
            state,
            opts,
            final_alpha_cumprod,
            num_inference_steps: 0,
            prk_timesteps: vec![],
            ets: vec![],
            counter: 0,
            cur_sample: None,
            cur_model_output: None,
        }
    }

    fn step_ratio(&self) -> i64 {
        (self.state.num_train_timesteps() / self.num_inference_steps) as i64
    }

    /// Formula (9) of the PNDM paper: `x_{t-1}` from `x_t` and an (effective) noise prediction.
    fn prev_sample(&self, sample: Tensor<4>, timestep: i64, prev_timestep: i64, model_output: Tensor<4>) -> Tensor<4> {
        let acp = &self.state.alphas_cumprod;
        let a_t = acp[timestep as usize];
        let a_prev = if prev_timestep >= 0 { acp[prev_timestep as usize] } else { self.final_alpha_cumprod };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let model_output = match self.state.config.prediction_type {
            PredictionType::VPrediction => model_output.mul_scalar(a_t.sqrt()) + sample.clone().mul_scalar(b_t.sqrt()),
            _ => model_output,
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        sample.mul_scalar(sample_coeff) - model_output.mul_scalar(a_prev - a_t).div_scalar(denom)
    }

    /// One pseudo Runge-Kutta sub-step (4 sub-steps per PRK step).
    fn step_prk(&mut self, model_output: Tensor<4>, timestep: i64, sample: Tensor<4>) -> Tensor<4> {
        let diff_to_prev = if self.counter % 2 == 1 { 0 } else { self.step_ratio() / 2 };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.prk_timesteps[self.counter / 4 * 4];
        let acc = |cur: Option<Tensor<4>>, x: Tensor<4>| match cur {
            Some(c) => c + x,
            None => x,
        };
        let mut model_output = model_output;
        match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(acc(self.cur_model_output.take(), model_output.clone().div_scalar(6.0)));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
            }
            1 | 2 => self.cur_model_output = Some(acc(self.cur_model_output.take(), model_output.clone().div_scalar(3.0))),
            _ => model_output = acc(self.cur_model_output.take(), model_output.div_scalar(6.0)),
        }
        let cur_sample = self.cur_sample.clone().unwrap_or(sample);
        let prev = self.prev_sample(cur_sample, timestep, prev_timestep, model_output);
        self.counter += 1;
        prev
    }

    /// One linear multistep step (Adams-Bashforth with up to 4 past outputs).
    fn step_plms(&mut self, model_output: Tensor<4>, timestep: i64, sample: Tensor<4>) -> Tensor<4> {
        let (mut timestep, mut prev_timestep) = (timestep, timestep - self.step_ratio());
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += self.step_ratio();
        }
        let ets = self.ets.clone();
        let e = |k: usize| ets[ets.len() - k].clone();
        let mut sample = sample;
        let model_output = match ets.len() {
            1 if self.counter == 0 => {
                self.cur_sample = Some(sample.clone());
                model_output
            }
            1 if self.counter == 1 => {
                sample = self.cur_sample.take().expect("PLMS second step follows the first");
                (model_output + e(1)).div_scalar(2.0)
            }
            2 => (e(1).mul_scalar(3.0) - e(2)).div_scalar(2.0),
            3 => (e(1).mul_scalar(23.0) - e(2).mul_scalar(16.0) + e(3).mul_scalar(5.0)).div_scalar(12.0),
            _ => (e(1).mul_scalar(55.0) - e(2).mul_scalar(59.0) + e(3).mul_scalar(37.0) - e(4).mul_scalar(9.0)).mul_scalar(1.0 / 24.0),
        };
        let prev = self.prev_sample(sample, timestep, prev_timestep, model_output);
        self.counter += 1;
        prev
    }
}

impl Scheduler for PNDMScheduler {
    fn state(&self) -> &ScheduleState {
        &self.state
    }

    fn set_timesteps(&mut self, n: usize) -> Result<(), SchedulerError> {
        self.state.check_steps(n)?;
        self.num_inference_steps = n;
        // ascending `_timesteps`
        let descending = self.state.spaced_timesteps(n, f64::round_ties_even);
        self.state.check_timesteps_fit(descending.iter().rev().copied())?;
        let base: Vec<i64> = descending.into_iter().rev().map(|t| t as i64).collect();
        let len = base.len();
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.opts.skip_prk_steps {
            // [t_0 .. t_{n-2}, t_{n-2}, t_{n-1}] reversed: the second timestep repeats
            let mut v: Vec<i64> = base[..len - 1].to_vec();
            v.extend_from_slice(&base[len.saturating_sub(2)..len - 1]);
            v.push(base[len - 1]);
            v.reverse();
            (vec![], v)
        } else {
            // the last 4 timesteps, each followed by its half-step, sub-steps repeated
            let half = (self.state.num_train_timesteps() / n / 2) as i64;
            let last = &base[len.saturating_sub(4)..];
            let quads: Vec<i64> = last.iter().flat_map(|&t| [t, t + half]).collect();
            let rep: Vec<i64> = quads[..quads.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk = rep[1..rep.len() - 1].to_vec();
            prk.reverse();
            let plms: Vec<i64> = base[..len.saturating_sub(3)].iter().rev().copied().collect();
            (prk, plms)
        };
        self.state.timesteps = prk.iter().chain(plms.iter()).map(|&t| t as f64).collect();
        self.prk_timesteps = prk;
        self.ets.clear();
        self.counter = 0;
        self.cur_sample = None;
        self.cur_model_output = None;
        Ok(())
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> StepOutput {
        let timestep = self.state.timesteps[step_index] as i64;
        let prev = if self.counter < self.prk_timesteps.len() && !self.opts.skip_prk_steps {
            self.step_prk(model_output, timestep, sample)
        } else {
            self.step_plms(model_output, timestep, sample)
        };
        StepOutput { prev_sample: prev, pred_original_sample: None }
    }

    fn keeps_history(&self) -> bool {
        true
    }
}
