//! Diffusion schedulers, ported from diffusers 0.42 (`diffusers/schedulers/scheduling_*.py`):
//! DDIM, PNDM (PLMS), EulerDiscrete, EulerAncestralDiscrete, DPMSolverMultistep (DPM++ 2M,
//! optionally Karras) and LMSDiscrete, configured like `Class.from_config(scheduler_config.json,
//! **overrides)`.
//!
//! Scheduler state lives on the host (`Vec<f64>` tables: betas, alphas_cumprod, sigmas,
//! timesteps, all computed with diffusers' float32 rounding); only latents and model outputs are
//! tensors, and host-computed coefficients are applied with tensor ops. Nothing here reads a
//! tensor back to the host, so every scheduler runs unchanged on WebGPU in the browser.
//!
//! ```text
//! let file = SchedulerConfig::from_json(&text, "scheduler/scheduler_config.json")?;
//! let mut s = create(SchedulerKind::from_config(&file)?, &file, &Overrides::default())?;
//! s.set_timesteps(20)?;
//! let mut x = noise * s.init_noise_sigma();
//! for i in 0..s.timesteps().len() {
//!     let eps = unet(s.scale_model_input(x.clone(), i), s.timesteps()[i]);
//!     x = s.step(eps, i, x, None).prev_sample;
//! }
//! ```

pub mod config;
pub mod ddim;
pub mod dpmsolver_multistep;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
pub mod lms_discrete;
pub mod pndm;
pub mod schedule;

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Tensor, TensorData};

pub use crate::error::SchedulerError;
pub use crate::prediction_type::PredictionType;
pub use config::{
    AlgorithmType, BetaSchedule, ClassOptions, FinalSigmasType, InterpolationType, Overrides, ResolvedConfig, SchedulerConfig, SolverType,
    TimestepSpacing,
};
pub use ddim::DDIMScheduler;
pub use dpmsolver_multistep::DPMSolverMultistepScheduler;
pub use euler_ancestral_discrete::EulerAncestralDiscreteScheduler;
pub use euler_discrete::EulerDiscreteScheduler;
pub use lms_discrete::LMSDiscreteScheduler;
pub use pndm::PNDMScheduler;
pub use schedule::{Parameterization, ScheduleState};

use config::Class;

/// Which scheduler to build. CLI names: `ddim`, `pndm`, `euler`, `euler-a`, `dpm++2m`,
/// `dpm++2m-karras`, `lms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddim,
    Pndm,
    Euler,
    EulerAncestral,
    /// DPM-Solver++ multistep; `karras` sets `use_karras_sigmas` (the `dpm++2m-karras` preset).
    /// Other DPM options (`solver_order`, `algorithm_type`, ...) come from the file/defaults.
    DpmSolverMultistep {
        karras: bool,
    },
    Lms,
}

impl SchedulerKind {
    pub const CLI_NAMES: [&'static str; 7] = crate::error::SCHEDULER_NAMES;

    /// The kind for a diffusers `_class_name`; for DPM-Solver the Karras flag is the file's
    /// `use_karras_sigmas`, so `create(from_class_name(..), file, ..)` is exactly `from_config`.
    pub fn from_class_name(class_name: &str, file: &SchedulerConfig) -> Result<Self, SchedulerError> {
        Ok(match class_name {
            "DDIMScheduler" => Self::Ddim,
            "PNDMScheduler" => Self::Pndm,
            "EulerDiscreteScheduler" => Self::Euler,
            "EulerAncestralDiscreteScheduler" => Self::EulerAncestral,
            "DPMSolverMultistepScheduler" => Self::DpmSolverMultistep { karras: file.use_karras_sigmas.unwrap_or(false) },
            "LMSDiscreteScheduler" => Self::Lms,
            other => return Err(SchedulerError::UnsupportedClass { class: other.into() }),
        })
    }

    /// The kind named by the file's `_class_name` (what a diffusers pipeline would load).
    pub fn from_config(file: &SchedulerConfig) -> Result<Self, SchedulerError> {
        let name = file.class_name.as_deref().ok_or(SchedulerError::MissingClass)?;
        Self::from_class_name(name, file)
    }

    /// The CLI name.
    pub fn cli_name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Pndm => "pndm",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::DpmSolverMultistep { karras: false } => "dpm++2m",
            Self::DpmSolverMultistep { karras: true } => "dpm++2m-karras",
            Self::Lms => "lms",
        }
    }

    /// The diffusers class this kind builds.
    pub fn class_name(self) -> &'static str {
        self.class().name()
    }

    fn class(self) -> Class {
        match self {
            Self::Ddim => Class::Ddim,
            Self::Pndm => Class::Pndm,
            Self::Euler => Class::Euler,
            Self::EulerAncestral => Class::EulerAncestral,
            Self::DpmSolverMultistep { .. } => Class::DpmSolverMultistep,
            Self::Lms => Class::Lms,
        }
    }
}

impl FromStr for SchedulerKind {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self, SchedulerError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "ddim" => Self::Ddim,
            "pndm" => Self::Pndm,
            "euler" => Self::Euler,
            "euler-a" => Self::EulerAncestral,
            "dpm++2m" => Self::DpmSolverMultistep { karras: false },
            "dpm++2m-karras" => Self::DpmSolverMultistep { karras: true },
            "lms" => Self::Lms,
            _ => return Err(SchedulerError::UnknownScheduler { name: s.into() }),
        })
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// Resolves the configuration (class defaults < `file` < preset < `overrides`) and builds the
/// scheduler. Call [`Scheduler::set_timesteps`] before stepping.
pub fn create(kind: SchedulerKind, file: &SchedulerConfig, overrides: &Overrides) -> Result<Box<dyn Scheduler>, SchedulerError> {
    let preset = match kind {
        SchedulerKind::DpmSolverMultistep { karras } => Some(karras),
        _ => None,
    };
    let config = config::resolve(kind.class(), preset, file, overrides)?;
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(DDIMScheduler::new(config)),
        SchedulerKind::Pndm => Box::new(PNDMScheduler::new(config)),
        SchedulerKind::Euler => Box::new(EulerDiscreteScheduler::new(config)),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestralDiscreteScheduler::new(config)),
        SchedulerKind::DpmSolverMultistep { .. } => Box::new(DPMSolverMultistepScheduler::new(config)),
        SchedulerKind::Lms => Box::new(LMSDiscreteScheduler::new(config)),
    })
}

/// What [`Scheduler::step`] returns.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// `x_{t-1}`, same shape as the sample: the next loop's sample.
    pub prev_sample: Tensor<4>,
    /// The predicted clean sample `x_0` for schedulers that return it (DDIM, Euler, Euler
    /// ancestral, LMS); `None` for PNDM and DPM-Solver (as in diffusers).
    pub pred_original_sample: Option<Tensor<4>>,
}

/// A diffusion scheduler. Tensors are `[batch, channels, height, width]` latents; `step_index`
/// is the 0-based position in [`Scheduler::timesteps`]. Steps must run in order after
/// [`Scheduler::set_timesteps`] (multistep schedulers keep history; starting at a later index,
/// as img2img does, is fine). An implementation provides [`Scheduler::state`],
/// [`Scheduler::set_timesteps`] and [`Scheduler::step`]; the other methods read the shared
/// [`ScheduleState`] (by its [`Parameterization`]) unless the scheduler overrides them.
pub trait Scheduler {
    /// The config, training tables and inference schedule behind the accessors.
    fn state(&self) -> &ScheduleState;

    /// Builds the inference schedule for `num_inference_steps` (1..=num_train_timesteps) and
    /// resets any multistep state.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError>;

    /// diffusers' `scheduler.timesteps`: what the UNet gets at each step. Integer schedules
    /// (DDIM, PNDM, DPM-Solver) hold exact integers; the Euler family holds float32 values.
    fn timesteps(&self) -> &[f64] {
        &self.state().timesteps
    }

    /// The sigma of each step with the final sigma appended (`timesteps().len() + 1` values) for
    /// sigma-based schedulers (Euler, Euler ancestral, LMS, DPM-Solver); `None` otherwise.
    fn sigmas(&self) -> Option<&[f64]> {
        let s = self.state();
        (s.parameterization != Parameterization::Alphas).then_some(&s.sigmas[..])
    }

    /// Standard deviation of the initial noise: `latents = randn * init_noise_sigma()`. 1, or
    /// for the Euler family and LMS the largest sigma (of the training table before
    /// `set_timesteps`), `sqrt(max^2 + 1)` under leading spacing (float32 like diffusers).
    fn init_noise_sigma(&self) -> f64 {
        let s = self.state();
        if s.parameterization != Parameterization::Sigmas {
            return 1.0;
        }
        let sigmas = if s.sigmas.is_empty() { &s.train_sigmas } else { &s.sigmas };
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        match s.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => schedule::f32r(schedule::f32r(schedule::f32r(max * max) + 1.0).sqrt()),
        }
    }

    /// The factor [`Scheduler::scale_model_input`] multiplies by at `step_index`
    /// (`1 / sqrt(sigma^2 + 1)` for the Euler family and LMS, 1 otherwise).
    fn model_input_scale(&self, step_index: usize) -> f64 {
        let s = self.state();
        if s.parameterization != Parameterization::Sigmas {
            return 1.0;
        }
        let sigma = s.sigmas[step_index];
        1.0 / schedule::f32r(schedule::f32r(schedule::f32r(sigma * sigma) + 1.0).sqrt())
    }

    /// Scales the UNet input at `step_index`. Shapes: `[b, c, h, w]` -> same.
    fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let c = self.model_input_scale(step_index);
        if c == 1.0 { sample } else { sample.div_scalar(1.0 / c) }
    }

    /// Whether [`Scheduler::step`] needs a `noise` tensor (Euler ancestral; DDIM with eta > 0).
    fn needs_noise(&self) -> bool {
        false
    }

    /// Whether [`Scheduler::step`] uses the model outputs of earlier steps (PNDM, DPM-Solver
    /// multistep, LMS): such a run cannot continue from saved latents alone.
    fn keeps_history(&self) -> bool {
        false
    }

    /// One denoising step at `step_index` from the model output (`[b, c, h, w]`, what the UNet
    /// predicted for `scale_model_input(sample)`, after guidance) and the current `sample`.
    /// `noise` (standard normal, same shape) is required when [`Scheduler::needs_noise`].
    ///
    /// # Panics
    /// If `step_index` is out of range, or `noise` is missing when it is needed.
    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> StepOutput;

    /// The forward (noising) process of this scheduler at `timestep`, for img2img and training:
    /// `sqrt(acp[t]) x + sqrt(1 - acp[t]) n` for DDIM/PNDM/DPM-Solver, `x + n * sigma(t)` for the
    /// sigma schedulers (the sigma of the schedule entry equal to `timestep`, found like diffusers'
    /// `index_for_timestep`, else interpolated from the training table). Shapes: `[b, c, h, w]`.
    ///
    /// # Panics
    /// If `timestep` is outside `[0, num_train_timesteps)`.
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, timestep: f64) -> Tensor<4> {
        let s = self.state();
        if s.parameterization != Parameterization::Sigmas {
            return add_noise_ddpm(&s.alphas_cumprod, original, noise, &[s.train_index(timestep)]);
        }
        let last = s.train_sigmas.len() - 1;
        assert!(timestep >= 0.0 && timestep <= last as f64, "timestep {timestep} is outside [0, {last}]");
        let sigma = match schedule::index_for_timestep(&s.timesteps, timestep) {
            Some(i) => s.sigmas[i],
            None => schedule::f32r(schedule::interp(timestep, &s.train_sigmas)),
        };
        original + noise.mul_scalar(sigma)
    }

    /// The training betas (float32 values), `num_train_timesteps` long.
    fn betas(&self) -> &[f64] {
        &self.state().betas
    }

    /// The training `alphas_cumprod` (float32 values), `num_train_timesteps` long.
    fn alphas_cumprod(&self) -> &[f64] {
        &self.state().alphas_cumprod
    }

    /// The resolved configuration.
    fn config(&self) -> &ResolvedConfig {
        &self.state().config
    }

    /// The diffusers class name.
    fn name(&self) -> &'static str {
        self.state().config.class_name
    }
}

/// Per-batch-row scalars as a `[b, 1, 1, 1]` tensor of `like`'s dtype on its device (a host
/// upload, no readback), or a plain scalar multiply when all rows share one value.
fn mul_rows(x: Tensor<4>, coefs: &[f64]) -> Tensor<4> {
    if coefs.len() == 1 {
        return x.mul_scalar(coefs[0]);
    }
    let [b, ..] = x.dims();
    assert_eq!(coefs.len(), b, "one timestep per batch row ({b}) or a single one");
    let data: Vec<f32> = coefs.iter().map(|&c| c as f32).collect();
    let c = Tensor::<4>::from_data(TensorData::new(data, [b, 1, 1, 1]), (&x.device(), x.dtype()));
    x * c
}

/// DDPM forward noising `sqrt(acp[t]) * x + sqrt(1 - acp[t]) * noise` (diffusers'
/// `DDPMScheduler.add_noise`, the training target construction of textual inversion).
/// `timesteps`: one per batch row, or a single one for all rows. Shapes: `[b, c, h, w]`.
pub fn add_noise_ddpm(alphas_cumprod: &[f64], x: Tensor<4>, noise: Tensor<4>, timesteps: &[usize]) -> Tensor<4> {
    let a: Vec<f64> = timesteps.iter().map(|&t| alphas_cumprod[t].sqrt()).collect();
    let s: Vec<f64> = timesteps.iter().map(|&t| (1.0 - alphas_cumprod[t]).sqrt()).collect();
    mul_rows(x, &a) + mul_rows(noise, &s)
}

/// The v-prediction training target `sqrt(acp[t]) * noise - sqrt(1 - acp[t]) * x` (diffusers'
/// `get_velocity`). `timesteps`: one per batch row, or a single one. Shapes: `[b, c, h, w]`.
pub fn velocity(alphas_cumprod: &[f64], x: Tensor<4>, noise: Tensor<4>, timesteps: &[usize]) -> Tensor<4> {
    let a: Vec<f64> = timesteps.iter().map(|&t| alphas_cumprod[t].sqrt()).collect();
    let s: Vec<f64> = timesteps.iter().map(|&t| (1.0 - alphas_cumprod[t]).sqrt()).collect();
    mul_rows(noise, &a) - mul_rows(x, &s)
}

/// `x0` from a model output under `prediction_type` for sigma (Karras-style) schedulers:
/// epsilon `x - sigma * eps`; v `v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)`;
/// sample: the output itself.
pub(crate) fn sigma_pred_original(prediction_type: PredictionType, model_output: Tensor<4>, sample: Tensor<4>, sigma: f64) -> Tensor<4> {
    match prediction_type {
        PredictionType::Epsilon => sample - model_output.mul_scalar(sigma),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            model_output.mul_scalar(-sigma / s2.sqrt()) + sample.div_scalar(s2)
        }
        PredictionType::Sample => model_output,
    }
}
