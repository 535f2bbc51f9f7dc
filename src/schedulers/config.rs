//! Scheduler configuration the way diffusers' `SchedulerClass.from_config(config, **overrides)`
//! resolves it: [`SchedulerConfig`] is `scheduler/scheduler_config.json` with every key optional
//! (unknown keys such as `_diffusers_version` ignored); keys absent from the file take the
//! chosen class's `__init__` defaults (diffusers 0.42), and [`Overrides`] win over the file.
//! The outcome is a [`ResolvedConfig`] (serde `Serialize`, printable by the CLI).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use super::SchedulerError;
pub use crate::prediction_type::PredictionType;

/// Declares a config enum: its diffusers spellings (serde and `FromStr`), and `Display`.
macro_rules! config_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] $var),+ }

        impl $name {
            /// The accepted spellings, for error messages.
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$var => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s $(| $alias)* => Ok(Self::$var),)+
                    _ => Err(format!("expected one of {}", Self::NAMES.join(", "))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

config_enum!(
    /// `beta_schedule`: how the training betas are laid out.
    BetaSchedule {
        Linear = "linear",
        /// `linspace(sqrt(beta_start), sqrt(beta_end))^2` (Stable Diffusion).
        ScaledLinear = "scaled_linear",
        /// GLIDE cosine schedule.
        SquaredcosCapV2 = "squaredcos_cap_v2",
    }
);

config_enum!(
    /// `timestep_spacing` (Table 2 of arXiv 2305.08891).
    TimestepSpacing {
        Leading = "leading",
        Trailing = "trailing",
        Linspace = "linspace",
    }
);

config_enum!(
    /// `final_sigmas_type`: the sigma appended after the last step.
    FinalSigmasType {
        Zero = "zero",
        /// The smallest training sigma, `sqrt((1 - acp[0]) / acp[0])`.
        SigmaMin = "sigma_min",
    }
);

config_enum!(
    /// EulerDiscrete `interpolation_type`.
    InterpolationType {
        Linear = "linear",
        LogLinear = "log_linear",
    }
);

config_enum!(
    /// DPMSolverMultistep `algorithm_type` (`deis` is mapped to `dpmsolver++` like diffusers does).
    AlgorithmType {
        /// DPM-Solver++ (data prediction): the Stable Diffusion choice.
        DpmSolverPlusPlus = "dpmsolver++" | "deis",
        /// DPM-Solver (noise prediction); needs `final_sigmas_type` `sigma_min`.
        DpmSolver = "dpmsolver",
    }
);

config_enum!(
    /// DPMSolverMultistep `solver_type` for second/third order (`logrho`, `bh1`, `bh2` map to
    /// `midpoint` like diffusers does).
    SolverType {
        Midpoint = "midpoint" | "logrho" | "bh1" | "bh2",
        Heun = "heun",
    }
);

/// `scheduler_config.json` as diffusers writes it. Every key is optional; unknown keys are
/// ignored. Enum-valued keys stay strings here and are checked only by the class that uses them
/// (a config may carry keys of other classes). Non-finite numbers as Python writes them
/// (`-Infinity`) are accepted.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    #[serde(deserialize_with = "lenient_f64")]
    pub beta_start: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<usize>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub clip_sample_range: Option<f64>,
    pub thresholding: Option<bool>,
    pub skip_prk_steps: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub interpolation_type: Option<String>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub sigma_min: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    pub sigma_max: Option<f64>,
    pub timestep_type: Option<String>,
    pub final_sigmas_type: Option<String>,
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub lambda_min_clipped: Option<f64>,
    pub variance_type: Option<String>,
}

/// Numbers, `null`, or the strings `Infinity` / `-Infinity` / `NaN` (see [`SchedulerConfig::from_json`]).
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
    }
    match Option::<Num>::deserialize(d)? {
        None => Ok(None),
        Some(Num::F(x)) => Ok(Some(x)),
        Some(Num::S(s)) => match s.as_str() {
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            "NaN" => Ok(Some(f64::NAN)),
            _ => Err(serde::de::Error::custom(format!("expected a number, got \"{s}\""))),
        },
    }
}

/// Quotes Python's bare `Infinity`, `-Infinity` and `NaN` tokens (outside strings) so the text
/// is JSON; diffusers writes `"lambda_min_clipped": -Infinity` for DPM-Solver configs.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_str, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        if let Some(tok) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t)) {
            out.push('"');
            out.push_str(tok);
            out.push('"');
            rest = &rest[tok.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl SchedulerConfig {
    /// Parses a `scheduler_config.json`; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self, SchedulerError> {
        serde_json::from_str(&quote_non_finite(text)).map_err(|e| SchedulerError::Json { file: file.into(), reason: e.to_string() })
    }
}

/// Explicit settings that win over the file (CLI flags). `None` = take the file's value, or the
/// class default. Setting an option the chosen class does not have is an error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub timestep_spacing: Option<TimestepSpacing>,
    pub prediction_type: Option<PredictionType>,
    pub steps_offset: Option<usize>,
    /// Euler, DPM-Solver, LMS.
    pub use_karras_sigmas: Option<bool>,
    /// DDIM, Euler, EulerAncestral, DPM-Solver.
    pub rescale_betas_zero_snr: Option<bool>,
    /// Euler, DPM-Solver.
    pub final_sigmas_type: Option<FinalSigmasType>,
    /// DDIM, PNDM.
    pub set_alpha_to_one: Option<bool>,
    /// DDIM.
    pub clip_sample: Option<bool>,
    /// DDIM's `eta` (a `step` argument in diffusers; 0 = deterministic DDIM).
    pub eta: Option<f64>,
    /// DPM-Solver (1, 2 or 3).
    pub solver_order: Option<usize>,
}

/// DDIMScheduler's own options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DdimOptions {
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub rescale_betas_zero_snr: bool,
    /// Not a diffusers config key: the pipeline's `eta` (default 0).
    pub eta: f64,
}

/// PNDMScheduler's own options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PndmOptions {
    /// `true` = PLMS only (Stable Diffusion); `false` runs 12 Runge-Kutta warm-up steps first.
    pub skip_prk_steps: bool,
    pub set_alpha_to_one: bool,
}

/// EulerDiscreteScheduler's own options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EulerOptions {
    pub interpolation_type: InterpolationType,
    pub use_karras_sigmas: bool,
    /// Karras range overrides (`None` = the schedule's own ends).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigmas_type: FinalSigmasType,
    pub rescale_betas_zero_snr: bool,
}

/// EulerAncestralDiscreteScheduler's own options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EulerAncestralOptions {
    pub rescale_betas_zero_snr: bool,
}

/// DPMSolverMultistepScheduler's own options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DpmSolverOptions {
    pub solver_order: usize,
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub use_karras_sigmas: bool,
    pub final_sigmas_type: FinalSigmasType,
    /// `-inf` (no clipping) by default; serialized as `null` when infinite.
    pub lambda_min_clipped: f64,
    pub rescale_betas_zero_snr: bool,
}

/// LMSDiscreteScheduler's own options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LmsOptions {
    pub use_karras_sigmas: bool,
}

/// The class-specific part of a [`ResolvedConfig`] (serialized flat, like diffusers' config).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ClassOptions {
    Ddim(DdimOptions),
    Pndm(PndmOptions),
    Euler(EulerOptions),
    EulerAncestral(EulerAncestralOptions),
    DpmSolverMultistep(DpmSolverOptions),
    Lms(LmsOptions),
}

/// A scheduler's effective configuration: class defaults, then the file, then overrides.
/// Serializes with diffusers' key names (plus `_class_name`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedConfig {
    #[serde(rename = "_class_name")]
    pub class_name: &'static str,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    #[serde(flatten)]
    pub options: ClassOptions,
}

/// The diffusers class a [`super::SchedulerKind`] resolves as, with its `__init__` defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Ddim,
    Pndm,
    Euler,
    EulerAncestral,
    DpmSolverMultistep,
    Lms,
}

impl Class {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Class::Ddim => "DDIMScheduler",
            Class::Pndm => "PNDMScheduler",
            Class::Euler => "EulerDiscreteScheduler",
            Class::EulerAncestral => "EulerAncestralDiscreteScheduler",
            Class::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            Class::Lms => "LMSDiscreteScheduler",
        }
    }

    fn default_spacing(self) -> TimestepSpacing {
        match self {
            Class::Ddim | Class::Pndm => TimestepSpacing::Leading,
            _ => TimestepSpacing::Linspace,
        }
    }
}

/// Parses and validates keys for one class (errors name the class).
struct Resolver {
    class: Class,
}

impl Resolver {
    fn invalid(&self, key: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> SchedulerError {
        SchedulerError::InvalidConfig { class: self.class.name(), key, value: value.to_string(), reason: reason.into() }
    }

    fn parse<T: FromStr<Err = String> + Copy>(
        &self,
        key: &'static str,
        over: Option<T>,
        file: &Option<String>,
        default: T,
    ) -> Result<T, SchedulerError> {
        if let Some(v) = over {
            return Ok(v);
        }
        match file {
            Some(s) => s.parse().map_err(|e: String| self.invalid(key, format!("\"{s}\""), e)),
            None => Ok(default),
        }
    }

    /// A boolean option the file may say `true` to but this port does not implement.
    fn unsupported_flag(&self, key: &'static str, value: Option<bool>, hint: &str) -> Result<(), SchedulerError> {
        if value == Some(true) {
            return Err(self.invalid(key, true, format!("not supported by this port; {hint}")));
        }
        Ok(())
    }
}

/// Rejects an override of an option `class` does not have.
fn check_overrides(class: Class, o: &Overrides) -> Result<(), SchedulerError> {
    use Class::*;
    let has = |key: &str| -> bool {
        match key {
            "use_karras_sigmas" => matches!(class, Euler | DpmSolverMultistep | Lms),
            "rescale_betas_zero_snr" => matches!(class, Ddim | Euler | EulerAncestral | DpmSolverMultistep),
            "final_sigmas_type" => matches!(class, Euler | DpmSolverMultistep),
            "set_alpha_to_one" => matches!(class, Ddim | Pndm),
            "clip_sample" | "eta" => class == Ddim,
            "solver_order" => class == DpmSolverMultistep,
            _ => true,
        }
    };
    let set = [
        ("use_karras_sigmas", o.use_karras_sigmas.is_some()),
        ("rescale_betas_zero_snr", o.rescale_betas_zero_snr.is_some()),
        ("final_sigmas_type", o.final_sigmas_type.is_some()),
        ("set_alpha_to_one", o.set_alpha_to_one.is_some()),
        ("clip_sample", o.clip_sample.is_some()),
        ("eta", o.eta.is_some()),
        ("solver_order", o.solver_order.is_some()),
    ];
    for (key, is_set) in set {
        if is_set && !has(key) {
            return Err(SchedulerError::OverrideNotApplicable { class: class.name(), key });
        }
    }
    Ok(())
}

/// Resolves `file` + `overrides` for `class` (diffusers 0.42 defaults), validating every value
/// the class uses. `karras` is the preset's Karras flag (`dpm++2m-karras`), applied between the
/// file and the overrides.
pub(crate) fn resolve(class: Class, karras_preset: Option<bool>, file: &SchedulerConfig, o: &Overrides) -> Result<ResolvedConfig, SchedulerError> {
    check_overrides(class, o)?;
    let r = Resolver { class };
    let f = file;

    let num_train_timesteps = f.num_train_timesteps.unwrap_or(1000);
    if num_train_timesteps < 2 {
        return Err(r.invalid("num_train_timesteps", num_train_timesteps, "must be at least 2"));
    }
    let beta_start = f.beta_start.unwrap_or(0.0001);
    let beta_end = f.beta_end.unwrap_or(0.02);
    let beta_schedule = r.parse("beta_schedule", None, &f.beta_schedule, BetaSchedule::Linear)?;
    if let Some(tb) = &f.trained_betas {
        if tb.len() != num_train_timesteps {
            return Err(r.invalid(
                "trained_betas",
                format!("[{} values]", tb.len()),
                format!("must have num_train_timesteps = {num_train_timesteps} values"),
            ));
        }
        if tb.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(r.invalid("trained_betas", "[...]", "every beta must be in [0, 1)"));
        }
    } else if !(beta_start.is_finite() && beta_end.is_finite() && beta_start >= 0.0 && beta_end < 1.0 && beta_start <= beta_end) {
        return Err(r.invalid("beta_start/beta_end", format!("{beta_start}/{beta_end}"), "need 0 <= beta_start <= beta_end < 1"));
    }
    let prediction_type = r.parse("prediction_type", o.prediction_type, &f.prediction_type, PredictionType::Epsilon)?;
    if prediction_type == PredictionType::Sample && matches!(class, Class::Pndm | Class::EulerAncestral) {
        return Err(r.invalid("prediction_type", "sample", "this scheduler supports epsilon and v_prediction only (as in diffusers)"));
    }
    let timestep_spacing = r.parse("timestep_spacing", o.timestep_spacing, &f.timestep_spacing, class.default_spacing())?;
    let steps_offset = o.steps_offset.or(f.steps_offset).unwrap_or(0);
    let rescale = o.rescale_betas_zero_snr.or(f.rescale_betas_zero_snr).unwrap_or(false);
    let karras = o.use_karras_sigmas.or(karras_preset).or(f.use_karras_sigmas).unwrap_or(false);
    let final_sigmas = |r: &Resolver| r.parse("final_sigmas_type", o.final_sigmas_type, &f.final_sigmas_type, FinalSigmasType::Zero);
    let no_other_sigmas = |r: &Resolver| -> Result<(), SchedulerError> {
        r.unsupported_flag("use_exponential_sigmas", f.use_exponential_sigmas, "set it to false or use use_karras_sigmas")?;
        r.unsupported_flag("use_beta_sigmas", f.use_beta_sigmas, "set it to false or use use_karras_sigmas")
    };
    let no_thresholding = |r: &Resolver| r.unsupported_flag("thresholding", f.thresholding, "it is meant for pixel-space models; set it to false");

    let options = match class {
        Class::Ddim => {
            no_thresholding(&r)?;
            let eta = o.eta.unwrap_or(0.0);
            if !(eta.is_finite() && eta >= 0.0) {
                return Err(r.invalid("eta", eta, "must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like)"));
            }
            ClassOptions::Ddim(DdimOptions {
                clip_sample: o.clip_sample.or(f.clip_sample).unwrap_or(true),
                clip_sample_range: f.clip_sample_range.unwrap_or(1.0),
                set_alpha_to_one: o.set_alpha_to_one.or(f.set_alpha_to_one).unwrap_or(true),
                rescale_betas_zero_snr: rescale,
                eta,
            })
        }
        Class::Pndm => ClassOptions::Pndm(PndmOptions {
            skip_prk_steps: f.skip_prk_steps.unwrap_or(false),
            set_alpha_to_one: o.set_alpha_to_one.or(f.set_alpha_to_one).unwrap_or(false),
        }),
        Class::Euler => {
            no_other_sigmas(&r)?;
            if let Some(t) = &f.timestep_type
                && t != "discrete"
            {
                return Err(r.invalid("timestep_type", format!("\"{t}\""), "only \"discrete\" is supported"));
            }
            ClassOptions::Euler(EulerOptions {
                interpolation_type: r.parse("interpolation_type", None, &f.interpolation_type, InterpolationType::Linear)?,
                use_karras_sigmas: karras,
                sigma_min: f.sigma_min,
                sigma_max: f.sigma_max,
                final_sigmas_type: final_sigmas(&r)?,
                rescale_betas_zero_snr: rescale,
            })
        }
        Class::EulerAncestral => ClassOptions::EulerAncestral(EulerAncestralOptions { rescale_betas_zero_snr: rescale }),
        Class::DpmSolverMultistep => {
            no_thresholding(&r)?;
            no_other_sigmas(&r)?;
            r.unsupported_flag("use_lu_lambdas", f.use_lu_lambdas, "set it to false or use use_karras_sigmas")?;
            r.unsupported_flag("use_flow_sigmas", f.use_flow_sigmas, "flow-matching models are not supported")?;
            if let Some(v) = &f.variance_type {
                return Err(r.invalid(
                    "variance_type",
                    format!("\"{v}\""),
                    "learned variance is not supported; use a config with variance_type null",
                ));
            }
            let algorithm_type = match &f.algorithm_type {
                Some(s) if s.starts_with("sde-") => {
                    return Err(r.invalid("algorithm_type", format!("\"{s}\""), "the SDE variants are not supported; use dpmsolver++"));
                }
                _ => r.parse("algorithm_type", None, &f.algorithm_type, AlgorithmType::DpmSolverPlusPlus)?,
            };
            let final_sigmas_type = final_sigmas(&r)?;
            if algorithm_type == AlgorithmType::DpmSolver && final_sigmas_type == FinalSigmasType::Zero {
                return Err(r.invalid("final_sigmas_type", "zero", "algorithm_type dpmsolver needs final_sigmas_type sigma_min"));
            }
            let solver_order = o.solver_order.or(f.solver_order).unwrap_or(2);
            if !(1..=3).contains(&solver_order) {
                return Err(r.invalid("solver_order", solver_order, "must be 1, 2 or 3"));
            }
            ClassOptions::DpmSolverMultistep(DpmSolverOptions {
                solver_order,
                algorithm_type,
                solver_type: r.parse("solver_type", None, &f.solver_type, SolverType::Midpoint)?,
                lower_order_final: f.lower_order_final.unwrap_or(true),
                euler_at_final: f.euler_at_final.unwrap_or(false),
                use_karras_sigmas: karras,
                final_sigmas_type,
                lambda_min_clipped: f.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
                rescale_betas_zero_snr: rescale,
            })
        }
        Class::Lms => {
            no_other_sigmas(&r)?;
            ClassOptions::Lms(LmsOptions { use_karras_sigmas: karras })
        }
    };

    Ok(ResolvedConfig {
        class_name: class.name(),
        num_train_timesteps,
        beta_start,
        beta_end,
        beta_schedule,
        trained_betas: f.trained_betas.clone(),
        prediction_type,
        timestep_spacing,
        steps_offset,
        options,
    })
}
