//! [`PredictionType`]: what a diffusion model's output means, diffusers' `prediction_type`
//! config key (`epsilon`, `sample`, `v_prediction`), shared by the schedulers (`step`), training
//! (the loss target) and the single-file loader (the `scheduler_config.json` it writes). A leaf
//! module: it depends on nothing else in the crate.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// `prediction_type`: what the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PredictionType {
    #[serde(rename = "epsilon")]
    Epsilon,
    /// Velocity `sqrt(acp) * noise - sqrt(1 - acp) * x0` (SD 2.x 768 models).
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The clean sample (`original_sample` is diffusers' old spelling).
    #[serde(rename = "sample")]
    Sample,
}

impl PredictionType {
    /// The accepted spellings, for error messages.
    pub const NAMES: &'static [&'static str] = &["epsilon", "v_prediction", "sample"];

    /// The diffusers spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
            Self::Sample => "sample",
        }
    }
}

impl FromStr for PredictionType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" | "original_sample" => Ok(Self::Sample),
            _ => Err(format!("expected one of {}", Self::NAMES.join(", "))),
        }
    }
}

impl fmt::Display for PredictionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
