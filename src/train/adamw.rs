//! Host-side AdamW with PyTorch's exact update rule (`torch.optim.AdamW`, non-amsgrad,
//! non-maximize) and the learning-rate schedules of diffusers' textual-inversion script.
//!
//! The trained parameters are tiny (`n_vectors x hidden`, e.g. 2 x 768), so the optimizer runs
//! on the host in f64 after the gradient was read back; the parameters themselves are stored as
//! f32 (as torch stores them) and rounded once per update.

use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (torch defaults except `weight_decay`, which is diffusers' 1e-2).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// AdamW state for a flat parameter vector: what a checkpoint must keep to resume exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWState {
    /// Number of updates done so far (torch's `state["step"]`).
    pub step: u64,
    /// First moment `m`, one per parameter.
    pub exp_avg: Vec<f64>,
    /// Second moment `v`, one per parameter.
    pub exp_avg_sq: Vec<f64>,
}

impl AdamWState {
    /// Fresh state (step 0, zero moments) for `len` parameters.
    pub fn new(len: usize) -> Self {
        Self { step: 0, exp_avg: vec![0.0; len], exp_avg_sq: vec![0.0; len] }
    }
}

/// AdamW on a host vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub state: AdamWState,
}

impl AdamW {
    pub fn new(config: AdamWConfig, len: usize) -> Self {
        Self { config, state: AdamWState::new(len) }
    }

    /// One update with learning rate `lr`, exactly as `torch.optim.AdamW` (single tensor path):
    ///
    /// ```text
    /// t += 1
    /// p *= 1 - lr * wd
    /// m = b1 m + (1 - b1) g
    /// v = b2 v + (1 - b2) g^2
    /// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    /// ```
    ///
    /// computed in f64 from the f32 parameters and rounded back to f32.
    ///
    /// # Panics
    /// If `params`, `grad` and the state have different lengths.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f64) {
        let c = self.config;
        let s = &mut self.state;
        assert_eq!(params.len(), grad.len(), "AdamW: {} parameters but {} gradients", params.len(), grad.len());
        assert_eq!(params.len(), s.exp_avg.len(), "AdamW: state holds {} parameters, got {}", s.exp_avg.len(), params.len());
        s.step += 1;
        let t = s.step as f64;
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
        let step_size = lr / bias_correction1;
        let decay = 1.0 - lr * c.weight_decay;
        for i in 0..params.len() {
            let g = grad[i] as f64;
            let mut p = params[i] as f64 * decay;
            let m = c.beta1 * s.exp_avg[i] + (1.0 - c.beta1) * g;
            let v = c.beta2 * s.exp_avg_sq[i] + (1.0 - c.beta2) * g * g;
            s.exp_avg[i] = m;
            s.exp_avg_sq[i] = v;
            let denom = v.sqrt() / bias_correction2_sqrt + c.eps;
            p -= step_size * m / denom;
            params[i] = p as f32;
        }
    }
}

/// Learning-rate schedule (diffusers `get_scheduler` names `constant` and `constant_with_warmup`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// The base learning rate at every step.
    Constant,
    /// `base * min(1, k / warmup_steps)` at optimizer step `k` (0-based), like torch's
    /// `LambdaLR` in diffusers' `get_constant_schedule_with_warmup`: the first update uses
    /// learning rate 0 (it still advances Adam's moments and step count, as in torch).
    ConstantWithWarmup { warmup_steps: usize },
}

impl LrSchedule {
    /// Learning rate for optimizer step `k` (0-based).
    pub fn lr(&self, base: f64, k: usize) -> f64 {
        match *self {
            Self::Constant => base,
            Self::ConstantWithWarmup { warmup_steps } => {
                if k < warmup_steps {
                    base * k as f64 / (warmup_steps.max(1)) as f64
                } else {
                    base
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        // with bias correction the first Adam step is lr * g / (|g| + eps') ~ lr * sign(g)
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() }, 2);
        let mut p = [1.0f32, -1.0];
        opt.step(&mut p, &[0.5, -2.0], 0.1);
        assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6, "{p:?}");
        assert_eq!(opt.state.step, 1);
    }

    #[test]
    fn weight_decay_is_decoupled() {
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.5, ..Default::default() }, 1);
        let mut p = [2.0f32];
        opt.step(&mut p, &[0.0], 0.1);
        // p * (1 - 0.1 * 0.5), no gradient step
        assert!((p[0] - 1.9).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn warmup_schedule() {
        let s = LrSchedule::ConstantWithWarmup { warmup_steps: 4 };
        assert_eq!(s.lr(1.0, 0), 0.0);
        assert_eq!(s.lr(1.0, 2), 0.5);
        assert_eq!(s.lr(1.0, 4), 1.0);
        assert_eq!(s.lr(1.0, 100), 1.0);
        assert_eq!(LrSchedule::Constant.lr(0.3, 0), 0.3);
    }
}
