//! Host-side schedule tables shared by the schedulers, computed exactly the way diffusers 0.42
//! computes them: `betas` / `alphas_cumprod` in float32 torch ops (`torch.linspace`,
//! `torch.cumprod`, `rescale_zero_terminal_snr`), inference timesteps with numpy's `linspace`,
//! `arange` and `round` (half to even), `np.interp` of the sigma table, the Karras schedule and
//! `_sigma_to_t`. Everything is `Vec<f64>`; values that torch/numpy hold in float32 are rounded
//! to f32 and widened, so they are bit-identical to the reference tables. [`ScheduleState`] holds
//! these tables (and the inference schedule) for every scheduler.

use super::SchedulerError;
use super::config::{BetaSchedule, FinalSigmasType, ResolvedConfig, TimestepSpacing};

/// How a scheduler's latents relate to its noise level. Decides what the shared
/// [`super::Scheduler`] accessors return: `sigmas`, `init_noise_sigma`, `model_input_scale` and
/// `add_noise`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parameterization {
    /// Variance preserving `sqrt(acp) x0 + sqrt(1 - acp) noise` on integer timesteps with no
    /// sigma schedule (DDIM, PNDM): `init_noise_sigma` 1, unscaled model input, DDPM `add_noise`.
    Alphas,
    /// The same latents, stepped on a sigma schedule (DPM-Solver): as [`Self::Alphas`], but with
    /// `sigmas`.
    AlphasWithSigmas,
    /// Variance exploding `x0 + sigma * noise` (k-diffusion: Euler, Euler ancestral, LMS):
    /// `init_noise_sigma` the largest sigma, model input scaled by `1 / sqrt(sigma^2 + 1)`,
    /// `add_noise` `x + sigma * noise`.
    Sigmas,
}

/// The state every scheduler shares: the resolved config, the training tables and the current
/// inference schedule. Each scheduler holds one, and the [`super::Scheduler`] accessors read it
/// through `Scheduler::state`; the scheduler files hold only their own step math.
#[derive(Clone, Debug)]
pub struct ScheduleState {
    /// The resolved configuration.
    pub config: ResolvedConfig,
    pub parameterization: Parameterization,
    /// The training betas (float32 values), `num_train_timesteps` long.
    pub betas: Vec<f64>,
    /// The training `alphas_cumprod` (float32 values), `num_train_timesteps` long.
    pub alphas_cumprod: Vec<f64>,
    /// Float32 sigma per training timestep; empty for [`Parameterization::Alphas`].
    pub train_sigmas: Vec<f64>,
    /// diffusers' `scheduler.timesteps`; empty before `set_timesteps`.
    pub timesteps: Vec<f64>,
    /// `timesteps.len() + 1` sigmas (the final one appended; EulerDiscrete log_linear: one more,
    /// as in diffusers); empty for [`Parameterization::Alphas`] and before `set_timesteps`.
    pub sigmas: Vec<f64>,
}

impl ScheduleState {
    /// The training tables: betas (optionally rescaled to zero terminal SNR) and alphas_cumprod;
    /// with sigmas also the float32 sigma table, for which the last alphas_cumprod is set to 2^-24
    /// under `rescale_zero_snr` (so the first sigma is finite).
    pub fn new(config: ResolvedConfig, parameterization: Parameterization, rescale_zero_snr: bool) -> Self {
        let betas = betas(&config, rescale_zero_snr);
        let mut alphas_cumprod = alphas_cumprod(&betas);
        let train_sigmas = if parameterization == Parameterization::Alphas {
            vec![]
        } else {
            if rescale_zero_snr {
                *alphas_cumprod.last_mut().expect("non-empty") = 2f64.powi(-24);
            }
            sigma_table(&alphas_cumprod)
        };
        Self { config, parameterization, betas, alphas_cumprod, train_sigmas, timesteps: vec![], sigmas: vec![] }
    }

    /// `num_train_timesteps` of the config.
    pub fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }

    /// Checks `num_inference_steps` against the training length.
    pub fn check_steps(&self, n: usize) -> Result<(), SchedulerError> {
        if n == 0 || n > self.num_train_timesteps() {
            return Err(SchedulerError::InvalidSteps { steps: n, max: self.num_train_timesteps() });
        }
        Ok(())
    }

    /// `timestep` as an index into the training tables.
    ///
    /// # Panics
    /// If it is not an integer in `[0, num_train_timesteps)`.
    pub fn train_index(&self, timestep: f64) -> usize {
        let nt = self.num_train_timesteps();
        assert!(
            timestep >= 0.0 && timestep < nt as f64 && timestep.fract() == 0.0,
            "timestep {timestep} is not an integer training timestep in [0, {nt})"
        );
        timestep as usize
    }

    /// `n` inference timesteps, descending, by the config's `timestep_spacing`: linspace
    /// (`linspace(0, num_train - 1, n)`, each value passed through `round`), leading (with
    /// `steps_offset`) or trailing.
    pub fn spaced_timesteps(&self, n: usize, round: impl Fn(f64) -> f64) -> Vec<f64> {
        let nt = self.num_train_timesteps();
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (nt - 1) as f64, n).into_iter().rev().map(round).collect(),
            TimestepSpacing::Leading => leading(nt, n, self.config.steps_offset),
            TimestepSpacing::Trailing => trailing(nt as f64, nt, n),
        }
    }

    /// Rejects a schedule with a timestep at or past `num_train_timesteps` (a `steps_offset` too
    /// large for leading spacing; diffusers fails later with an IndexError), naming the first.
    pub fn check_timesteps_fit(&self, timesteps: impl IntoIterator<Item = f64>) -> Result<(), SchedulerError> {
        let nt = self.num_train_timesteps();
        match timesteps.into_iter().find(|&t| t >= nt as f64) {
            Some(t) => Err(SchedulerError::InvalidConfig {
                class: self.config.class_name,
                key: "steps_offset",
                value: self.config.steps_offset.to_string(),
                reason: format!("it pushes timestep {t} past num_train_timesteps {nt}"),
            }),
            None => Ok(()),
        }
    }

    /// `alphas_cumprod` of the step after the last (`final_alpha_cumprod`): 1 with
    /// `set_alpha_to_one`, else `alphas_cumprod[0]`.
    pub fn final_alpha_cumprod(&self, set_alpha_to_one: bool) -> f64 {
        if set_alpha_to_one { 1.0 } else { self.alphas_cumprod[0] }
    }

    /// The (fractional) timesteps of `sigmas` by [`sigma_to_t`] in the training log-sigma table
    /// (the timesteps of a Karras schedule).
    pub fn sigmas_to_timesteps(&self, sigmas: &[f64]) -> Vec<f64> {
        let log_sigmas = log_table(&self.train_sigmas);
        sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect()
    }

    /// The sigma appended after the last step: 0, or the smallest training sigma.
    pub fn final_sigma(&self, final_sigmas_type: FinalSigmasType) -> f64 {
        match final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => self.train_sigmas[0],
        }
    }
}

/// Rounds to the nearest f32 and widens back (the value a float32 torch tensor would hold).
pub fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU, bit-exact: the step is
/// `(end - start) / (steps - 1)` in f32, the first half counts up from `start`, the second half
/// down from `end`, each value with a single (fused multiply-add) rounding.
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f64> {
    match steps {
        0 => return vec![],
        1 => return vec![f32r(start)],
        _ => {}
    }
    let (s, e) = (start as f32, end as f32);
    let step = ((e - s) / (steps - 1) as f32) as f64;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            let v = if i < half { s as f64 + step * i as f64 } else { e as f64 - step * (steps - i - 1) as f64 };
            f32r(v)
        })
        .collect()
}

/// `numpy.linspace(start, stop, num)` in f64 (`i * step + start`, the last value exactly `stop`).
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return vec![];
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `numpy.arange(start, 0, -step)` for a float `step > 0`: numpy's length
/// `ceil(start / step)` and its fill `start + i * ((start - step) - start)`.
pub fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil().max(0.0) as usize;
    let delta = (start - step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// "trailing" spacing: `round(arange(start, 0, -num_train / n)) - 1`, descending. numpy's
/// `arange` yields one element too many for a few `n` (61, 103, ... with 1000 train steps, where
/// `1000 / (1000 / n)` rounds above `n`) and diffusers then produces a timestep of -1; this keeps
/// the first `n` (a deliberate deviation that only removes that invalid timestep).
pub fn trailing(start: f64, num_train_timesteps: usize, n: usize) -> Vec<f64> {
    let ratio = num_train_timesteps as f64 / n as f64;
    let mut v: Vec<f64> = np_arange_down(start, ratio).into_iter().map(|t| t.round_ties_even() - 1.0).collect();
    v.truncate(n);
    v
}

/// "leading" spacing: `arange(0, n) * (num_train // n)`, descending, plus `steps_offset`.
pub fn leading(num_train_timesteps: usize, n: usize, steps_offset: usize) -> Vec<f64> {
    let ratio = num_train_timesteps / n;
    (0..n).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
}

/// The training betas of a resolved config, as diffusers builds them in float32
/// (`trained_betas`, `linear`, `scaled_linear`, `squaredcos_cap_v2`), optionally rescaled to
/// zero terminal SNR. Length `num_train_timesteps`.
pub fn betas(config: &ResolvedConfig, rescale_zero_snr: bool) -> Vec<f64> {
    let n = config.num_train_timesteps;
    let b = if let Some(tb) = &config.trained_betas {
        tb.iter().map(|&x| f32r(x)).collect()
    } else {
        match config.beta_schedule {
            BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
            BetaSchedule::ScaledLinear => {
                torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n).into_iter().map(|x| f32r(x * x)).collect()
            }
            BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(n, 0.999),
        }
    };
    if rescale_zero_snr { rescale_zero_terminal_snr(&b) } else { b }
}

/// diffusers' `betas_for_alpha_bar` with the cosine (GLIDE) `alpha_bar`, computed in f64 then
/// stored as float32.
pub fn betas_for_alpha_bar(n: usize, max_beta: f64) -> Vec<f64> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            f32r((1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta))
        })
        .collect()
}

/// `torch.cumprod(1 - betas)` in float32: `1 - beta` rounded to f32, the running product
/// accumulated in f64 (torch's CPU accumulation type) and each output rounded to f32.
pub fn alphas_cumprod(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= f32r(1.0 - b);
            f32r(acc)
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (arXiv 2305.08891, Algorithm 1), in float32 like torch:
/// shifts `sqrt(alphas_cumprod)` so the last is 0 and rescales so the first is unchanged.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let acp = alphas_cumprod(betas);
    let mut sqrt: Vec<f64> = acp.iter().map(|&a| f32r(a.sqrt())).collect();
    let (a0, at) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = f32r(a0 / f32r(a0 - at));
    for v in sqrt.iter_mut() {
        *v = f32r(f32r(*v - at) * scale);
    }
    let bar: Vec<f64> = sqrt.iter().map(|&v| f32r(v * v)).collect();
    (0..bar.len())
        .map(|i| {
            let alpha = if i == 0 { bar[0] } else { f32r(bar[i] / bar[i - 1]) };
            f32r(1.0 - alpha)
        })
        .collect()
}

/// The training sigma table `((1 - acp) / acp) ** 0.5` in float32, indexed by timestep.
pub fn sigma_table(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod.iter().map(|&a| f32r(f32r(f32r(1.0 - a) / a).sqrt())).collect()
}

/// `np.log` of the float32 sigma table (float32 results).
pub fn log_table(sigmas: &[f64]) -> Vec<f64> {
    sigmas.iter().map(|&s| f32r(s.ln())).collect()
}

/// `np.interp(x, arange(len(table)), table)`: linear interpolation between integer timesteps,
/// clamped to the ends, in f64.
pub fn interp(x: f64, table: &[f64]) -> f64 {
    let last = table.len() - 1;
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return table[0];
    }
    if x >= last as f64 {
        return table[last];
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return table[j];
    }
    (table[j + 1] - table[j]) * (x - j as f64) + table[j]
}

/// The Karras et al. (2022) schedule (`_convert_to_karras`, rho = 7): `n` sigmas from
/// `sigma_max` down to `sigma_min`, evenly spaced in `sigma^(1/rho)`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    np_linspace(0.0, 1.0, n).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// diffusers' `_sigma_to_t`: the (fractional) timestep whose log-sigma matches, interpolating
/// linearly in log-sigma between the two neighbouring training timesteps.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // index of the last log_sigmas[i] <= log_sigma (0 if none), at most len - 2
    let low = log_sigmas.iter().rposition(|&l| log_sigma - l >= 0.0).unwrap_or(0).min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// The timestep-indexed `(alpha_t, sigma_t)` of a sigma: `1 / sqrt(sigma^2 + 1)` and
/// `sigma * alpha_t` (`_sigma_to_alpha_sigma_t`).
pub fn sigma_to_alpha_sigma_t(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Index of `timestep` in a schedule like diffusers' `index_for_timestep`: the second match when
/// it occurs more than once, else the first; `None` when absent. Compared as float32.
pub fn index_for_timestep(timesteps: &[f64], timestep: f64) -> Option<usize> {
    let hits: Vec<usize> = (0..timesteps.len()).filter(|&i| timesteps[i] as f32 == timestep as f32).collect();
    match hits.len() {
        0 => None,
        1 => Some(hits[0]),
        _ => Some(hits[1]),
    }
}

/// `integral_{a}^{b} p(x) dx` of a polynomial of degree <= 5, exactly (3-point Gauss-Legendre).
pub fn integrate_poly5(p: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    let (half, mid) = ((b - a) / 2.0, (a + b) / 2.0);
    let x = (0.6f64).sqrt();
    half * (5.0 / 9.0 * p(mid - half * x) + 8.0 / 9.0 * p(mid) + 5.0 / 9.0 * p(mid + half * x))
}
