//! Port of diffusers' `models/embeddings.py` parts used by SD UNets: the sinusoidal
//! `Timesteps` projection (`get_timestep_embedding`) and the `TimestepEmbedding` MLP.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::nn::{Activation, Linear};
use crate::weights::{ParamSpec, TensorMap};

/// diffusers' `get_timestep_embedding` in float32, on the host: `half = dim / 2`,
/// `f_i = exp(-ln(10000) * i / (half - shift))`, `emb = [sin(t f), cos(t f)]` (`[cos, sin]` with
/// `flip_sin_to_cos`), zero-padded by one column when `dim` is odd. Every step rounds to f32
/// like torch does, so the result matches diffusers to the last bit or two.
///
/// Returns `timesteps.len() * dim` values, row-major `[timesteps.len(), dim]`.
pub fn get_timestep_embedding(timesteps: &[f64], dim: usize, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Vec<f32> {
    let half = dim / 2;
    let neg_log_max_period = -(10000f64.ln()) as f32;
    let denom = (half as f64 - downscale_freq_shift) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((neg_log_max_period * i as f32) / denom).exp()).collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let t = t as f32;
        let args = freqs.iter().map(|f| t * f);
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.map(|a| (a.sin(), a.cos())).unzip();
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

/// `Timesteps`: the parameter-free sinusoidal projection of the timesteps.
#[derive(Module, Debug)]
pub struct Timesteps {
    pub num_channels: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f64,
}

impl Timesteps {
    /// Embeds host-side timesteps (one value broadcast over `batch`, or one per sample) and
    /// uploads the result.
    ///
    /// # Shapes
    /// - output: `[batch, num_channels]`
    pub fn forward(&self, timesteps: &[f64], batch: usize, device: &Device) -> Tensor<2> {
        assert!(
            timesteps.len() == 1 || timesteps.len() == batch,
            "got {} timesteps for a batch of {batch} (give one, or one per sample)",
            timesteps.len()
        );
        let ts: Vec<f64> = if timesteps.len() == batch { timesteps.to_vec() } else { vec![timesteps[0]; batch] };
        let values = get_timestep_embedding(&ts, self.num_channels, self.flip_sin_to_cos, self.downscale_freq_shift);
        Tensor::from_data(TensorData::new(values, [batch, self.num_channels]), device)
    }
}

/// `TimestepEmbedding`: `linear_1 -> act -> linear_2 (-> post_act)`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    #[module(skip)]
    pub act: Activation,
    #[module(skip)]
    pub post_act: Option<Activation>,
}

impl TimestepEmbedding {
    pub fn specs(prefix: &str, in_channels: usize, time_embed_dim: usize, out: &mut Vec<ParamSpec>) {
        Linear::specs(&format!("{prefix}.linear_1"), in_channels, time_embed_dim, true, out);
        Linear::specs(&format!("{prefix}.linear_2"), time_embed_dim, time_embed_dim, true, out);
    }

    pub fn from_map(prefix: &str, act: Activation, post_act: Option<Activation>, map: &mut TensorMap) -> Self {
        Self {
            linear_1: Linear::from_map(&format!("{prefix}.linear_1"), true, map),
            linear_2: Linear::from_map(&format!("{prefix}.linear_2"), true, map),
            act,
            post_act,
        }
    }

    /// `[batch, in] -> [batch, time_embed_dim]`
    pub fn forward(&self, sample: Tensor<2>) -> Tensor<2> {
        let x = self.linear_2.forward(self.act.forward(self.linear_1.forward(sample)));
        match self.post_act {
            Some(act) => act.forward(x),
            None => x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_puts_cos_first_and_t0_is_cos1_sin0() {
        let e = get_timestep_embedding(&[0.0], 8, true, 0.0);
        assert_eq!(e, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let e = get_timestep_embedding(&[0.0], 5, false, 1.0);
        assert_eq!(e, vec![0.0, 0.0, 1.0, 1.0, 0.0]);
    }
}
