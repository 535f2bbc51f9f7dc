//! Host-side schedule tables shared by the schedulers, computed exactly the way diffusers 0.42
//! computes them: `betas` / `alphas_cumprod` in float32 torch ops (`torch.linspace`,
//! `torch.cumprod`, `rescale_zero_terminal_snr`), inference timesteps with numpy's `linspace`,
//! `arange` and `round` (half to even), `np.interp` of the sigma table, the Karras schedule and
//! `_sigma_to_t`. Everything is `Vec<f64>`; values that torch/numpy hold in float32 are rounded
//! to f32 and widened, so they are bit-identical to the reference tables.

use super::config::{BetaSchedule, ResolvedConfig};

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
