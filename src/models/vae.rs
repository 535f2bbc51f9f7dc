//! Port of diffusers' `AutoencoderKL` (`autoencoders/autoencoder_kl.py`, `autoencoders/vae.py`):
//! `Encoder` (`DownEncoderBlock2D`s, mid block with one-head pixel attention), `quant_conv`,
//! `DiagonalGaussianDistribution`, `post_quant_conv`, `Decoder` (`UpDecoderBlock2D`s).
//! Old checkpoints name the mid-block attention `query/key/value/proj_attn`; those keys are
//! mapped in `crate::weights::keys`.

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, AttnCapture};
use super::nn::{Activation, Conv2d, GroupNorm};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, TimeEmbeddingNorm, Upsample2D};
use super::unet::{UNetMidBlock2D, UNetMidBlock2DConfig};
use crate::error::ConfigError;
use crate::weights::{ParamSpec, TensorMap};

/// `AutoencoderKL` config, deserialized from `vae/config.json` (unknown keys ignored, missing
/// keys take diffusers' defaults).
#[derive(Clone, Debug, Deserialize)]
pub struct AutoencoderKLConfig {
    #[serde(default = "d_3")]
    pub in_channels: usize,
    #[serde(default = "d_3")]
    pub out_channels: usize,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_boc")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_1")]
    pub layers_per_block: usize,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_4")]
    pub latent_channels: usize,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    /// `null`: 0.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub latents_mean: Option<Value>,
    #[serde(default)]
    pub latents_std: Option<Value>,
    /// diffusers runs fp16 VAEs in f32 when set; compute here is always f32.
    #[serde(default = "d_true")]
    pub force_upcast: bool,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
}

fn d_1() -> usize {
    1
}
fn d_3() -> usize {
    3
}
fn d_4() -> usize {
    4
}
fn d_32() -> usize {
    32
}
fn d_true() -> bool {
    true
}
fn d_silu() -> String {
    "silu".into()
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_boc() -> Vec<usize> {
    vec![64]
}

/// GroupNorm / resnet eps of the VAE (fixed in diffusers).
const VAE_EPS: f64 = 1e-6;

impl AutoencoderKLConfig {
    /// Parses and checks a `config.json`; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self, ConfigError> {
        let c: Self = serde_json::from_str(text).map_err(|e| ConfigError::Invalid { file: file.into(), reason: e.to_string() })?;
        c.validate().map_err(|reason| ConfigError::Invalid { file: file.into(), reason })?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("`block_out_channels` is empty".into());
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return Err(format!("unsupported `down_block_types` entry `{t}` (supported: DownEncoderBlock2D)"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(format!("unsupported `up_block_types` entry `{t}` (supported: UpDecoderBlock2D)"));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "`down_block_types` ({}) and `up_block_types` ({}) must have one entry per `block_out_channels` entry ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if Activation::parse(&self.act_fn).is_none() {
            return Err(format!("unsupported `act_fn` `{}`", self.act_fn));
        }
        let g = self.norm_num_groups;
        if let Some(c) = self.block_out_channels.iter().find(|&&c| g == 0 || c % g != 0) {
            return Err(format!("`block_out_channels` entry {c} is not divisible by `norm_num_groups` {g}"));
        }
        Ok(())
    }

    fn act(&self) -> Activation {
        Activation::parse(&self.act_fn).expect("checked in from_json")
    }

    fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels: None,
            groups: self.norm_num_groups,
            eps: VAE_EPS,
            non_linearity: self.act(),
            time_embedding_norm: TimeEmbeddingNorm::Default,
            output_scale_factor: 1.0,
        }
    }

    fn mid_block(&self) -> UNetMidBlock2DConfig {
        let c = *self.block_out_channels.last().expect("checked in from_json");
        UNetMidBlock2DConfig {
            in_channels: c,
            temb_channels: None,
            num_layers: 1,
            resnet_eps: VAE_EPS,
            resnet_act_fn: self.act(),
            resnet_groups: self.norm_num_groups,
            resnet_time_scale_shift: TimeEmbeddingNorm::Default,
            add_attention: self.mid_block_add_attention,
            attention_head_dim: c,
            output_scale_factor: 1.0,
        }
    }
}

/// What [`AutoencoderKL`] passes should capture: attention probabilities (path
/// `encoder.mid_block.attentions.0` / `decoder.mid_block.attentions.0`) and, with
/// `intermediates`, the outputs of `encoder.conv_in`, `encoder.down_blocks.{i}`,
/// `encoder.mid_block`, `quant_conv`, `post_quant_conv`, `decoder.conv_in`, `decoder.mid_block`,
/// `decoder.up_blocks.{i}`.
#[derive(Debug, Default)]
pub struct VaeCapture {
    pub attn: AttnCapture,
    pub intermediates: bool,
    pub activations: HashMap<String, Tensor<4>>,
}

impl VaeCapture {
    pub fn intermediates() -> Self {
        Self { intermediates: true, ..Self::default() }
    }

    fn record(&mut self, name: &str, t: &Tensor<4>) {
        if self.intermediates {
            self.activations.insert(name.to_string(), t.clone());
        }
    }
}

/// `DownEncoderBlock2D`: resnets (no time embedding) and an optional `(0,1,0,1)`-padded
/// stride-2 downsampler.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// `downsamplers.0`
    pub downsamplers: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for r in &self.resnets {
            x = r.forward(x, None);
        }
        match &self.downsamplers {
            Some(d) => d.forward(x),
            None => x,
        }
    }
}

/// `UpDecoderBlock2D`: resnets and an optional nearest x2 upsampler.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// `upsamplers.0`
    pub upsamplers: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for r in &self.resnets {
            x = r.forward(x, None);
        }
        match &self.upsamplers {
            Some(u) => u.forward(x, None),
            None => x,
        }
    }
}

/// The VAE `Encoder` (`double_z`: outputs mean and logvar channels).
#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: UNetMidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    fn specs(c: &AutoencoderKLConfig, s: &mut Vec<ParamSpec>) {
        let boc = &c.block_out_channels;
        Conv2d::specs("encoder.conv_in", c.in_channels, boc[0], 3, true, s);
        let mut out_ch = boc[0];
        for (i, &ch) in boc.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = ch;
            for j in 0..c.layers_per_block {
                let r = c.resnet(if j == 0 { in_ch } else { out_ch }, out_ch);
                ResnetBlock2D::specs(&format!("encoder.down_blocks.{i}.resnets.{j}"), &r, s);
            }
            if i != boc.len() - 1 {
                Downsample2D::specs(&format!("encoder.down_blocks.{i}.downsamplers.0"), out_ch, out_ch, s);
            }
        }
        UNetMidBlock2D::specs("encoder.mid_block", &c.mid_block(), s);
        let last = *boc.last().unwrap();
        GroupNorm::specs("encoder.conv_norm_out", last, s);
        Conv2d::specs("encoder.conv_out", last, 2 * c.latent_channels, 3, true, s);
    }

    fn from_map(c: &AutoencoderKLConfig, map: &mut TensorMap) -> Self {
        let boc = &c.block_out_channels;
        let mut out_ch = boc[0];
        let mut down_blocks = Vec::with_capacity(boc.len());
        for (i, &ch) in boc.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = ch;
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    let r = c.resnet(if j == 0 { in_ch } else { out_ch }, out_ch);
                    ResnetBlock2D::from_map(&format!("encoder.down_blocks.{i}.resnets.{j}"), &r, map)
                })
                .collect();
            let downsamplers = (i != boc.len() - 1).then(|| Downsample2D::from_map(&format!("encoder.down_blocks.{i}.downsamplers.0"), 0, map));
            down_blocks.push(DownEncoderBlock2D { resnets, downsamplers });
        }
        Self {
            conv_in: Conv2d::from_map("encoder.conv_in", 1, 1, true, map),
            down_blocks,
            mid_block: UNetMidBlock2D::from_map("encoder.mid_block", &c.mid_block(), map),
            conv_norm_out: GroupNorm::from_map("encoder.conv_norm_out", c.norm_num_groups, VAE_EPS, map),
            conv_out: Conv2d::from_map("encoder.conv_out", 1, 1, true, map),
        }
    }

    /// `[batch, in_channels, H, W] -> [batch, 2 * latent_channels, H / f, W / f]`
    pub fn forward(&self, x: Tensor<4>, capture: &mut VaeCapture) -> Tensor<4> {
        let mut x = self.conv_in.forward(x);
        capture.record("encoder.conv_in", &x);
        for (i, b) in self.down_blocks.iter().enumerate() {
            x = b.forward(x);
            capture.record(&format!("encoder.down_blocks.{i}"), &x);
        }
        x = self.mid_block.forward(x, None, &mut capture.attn);
        capture.record("encoder.mid_block", &x);
        // conv_act is always SiLU in diffusers' Encoder/Decoder
        self.conv_out.forward(Activation::Silu.forward(self.conv_norm_out.forward(x)))
    }
}

/// The VAE `Decoder`.
#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    fn specs(c: &AutoencoderKLConfig, s: &mut Vec<ParamSpec>) {
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        Conv2d::specs("decoder.conv_in", c.latent_channels, rev[0], 3, true, s);
        UNetMidBlock2D::specs("decoder.mid_block", &c.mid_block(), s);
        let mut out_ch = rev[0];
        for (i, &ch) in rev.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            for j in 0..c.layers_per_block + 1 {
                let r = c.resnet(if j == 0 { prev } else { out_ch }, out_ch);
                ResnetBlock2D::specs(&format!("decoder.up_blocks.{i}.resnets.{j}"), &r, s);
            }
            if i != rev.len() - 1 {
                Upsample2D::specs(&format!("decoder.up_blocks.{i}.upsamplers.0"), out_ch, out_ch, s);
            }
        }
        GroupNorm::specs("decoder.conv_norm_out", c.block_out_channels[0], s);
        Conv2d::specs("decoder.conv_out", c.block_out_channels[0], c.out_channels, 3, true, s);
    }

    fn from_map(c: &AutoencoderKLConfig, map: &mut TensorMap) -> Self {
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let conv_in = Conv2d::from_map("decoder.conv_in", 1, 1, true, map);
        let mid_block = UNetMidBlock2D::from_map("decoder.mid_block", &c.mid_block(), map);
        let mut out_ch = rev[0];
        let mut up_blocks = Vec::with_capacity(rev.len());
        for (i, &ch) in rev.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| {
                    let r = c.resnet(if j == 0 { prev } else { out_ch }, out_ch);
                    ResnetBlock2D::from_map(&format!("decoder.up_blocks.{i}.resnets.{j}"), &r, map)
                })
                .collect();
            let upsamplers = (i != rev.len() - 1).then(|| Upsample2D::from_map(&format!("decoder.up_blocks.{i}.upsamplers.0"), map));
            up_blocks.push(UpDecoderBlock2D { resnets, upsamplers });
        }
        Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::from_map("decoder.conv_norm_out", c.norm_num_groups, VAE_EPS, map),
            conv_out: Conv2d::from_map("decoder.conv_out", 1, 1, true, map),
        }
    }

    /// `[batch, latent_channels, h, w] -> [batch, out_channels, h * f, w * f]`
    pub fn forward(&self, z: Tensor<4>, capture: &mut VaeCapture) -> Tensor<4> {
        let mut x = self.conv_in.forward(z);
        capture.record("decoder.conv_in", &x);
        x = self.mid_block.forward(x, None, &mut capture.attn);
        capture.record("decoder.mid_block", &x);
        for (i, b) in self.up_blocks.iter().enumerate() {
            x = b.forward(x);
            capture.record(&format!("decoder.up_blocks.{i}"), &x);
        }
        self.conv_out.forward(Activation::Silu.forward(self.conv_norm_out.forward(x)))
    }
}

/// diffusers' `DiagonalGaussianDistribution` over latents: `mean`, `logvar` (clamped to
/// `[-30, 20]`), `std = exp(logvar / 2)`.
#[derive(Clone, Debug)]
pub struct DiagonalGaussianDistribution {
    /// `[batch, latent_channels, h, w]`
    pub mean: Tensor<4>,
    pub logvar: Tensor<4>,
    pub std: Tensor<4>,
}

impl DiagonalGaussianDistribution {
    /// From `moments` `[batch, 2 * latent_channels, h, w]` (mean channels first).
    pub fn new(moments: Tensor<4>) -> Self {
        let c = moments.dims()[1] / 2;
        let mean = moments.clone().narrow(1, 0, c);
        let logvar = moments.narrow(1, c, c).clamp(-30.0, 20.0);
        let std = (logvar.clone() * 0.5).exp();
        Self { mean, logvar, std }
    }

    /// `mean + std * eps` (`latent_dist.sample()` with the given standard normal noise).
    pub fn sample(&self, eps: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std.clone() * eps
    }

    /// The mode (= mean).
    pub fn mode(&self) -> Tensor<4> {
        self.mean.clone()
    }
}

/// `AutoencoderKL`: the SD VAE.
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    /// Latents fed to the UNet are `(z - shift_factor) * scaling_factor`.
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl AutoencoderKL {
    /// Model type name used for key rules and error messages.
    pub const NAME: &'static str = "AutoencoderKL";

    /// Every parameter (canonical key, PyTorch shape) the config implies.
    pub fn param_specs(c: &AutoencoderKLConfig) -> Vec<ParamSpec> {
        let mut s = Vec::new();
        Encoder::specs(c, &mut s);
        Decoder::specs(c, &mut s);
        let l = c.latent_channels;
        if c.use_quant_conv {
            Conv2d::specs("quant_conv", 2 * l, 2 * l, 1, true, &mut s);
        }
        if c.use_post_quant_conv {
            Conv2d::specs("post_quant_conv", l, l, 1, true, &mut s);
        }
        s
    }

    /// Builds the model from loaded weights (see [`crate::weights::load_params`]).
    pub fn from_map(c: &AutoencoderKLConfig, map: &mut TensorMap) -> Self {
        Self {
            encoder: Encoder::from_map(c, map),
            decoder: Decoder::from_map(c, map),
            quant_conv: c.use_quant_conv.then(|| Conv2d::from_map("quant_conv", 1, 0, true, map)),
            post_quant_conv: c.use_post_quant_conv.then(|| Conv2d::from_map("post_quant_conv", 1, 0, true, map)),
            scaling_factor: c.scaling_factor,
            shift_factor: c.shift_factor.unwrap_or(0.0),
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.encoder.conv_in.weight.val().device()
    }

    /// Spatial downsampling factor (8 for SD).
    pub fn downsampling_factor(&self) -> usize {
        1 << self.encoder.down_blocks.iter().filter(|b| b.downsamplers.is_some()).count()
    }

    /// Queries per attention chunk in the mid blocks (`None`: all at once).
    pub fn set_query_chunk_size(&mut self, query_chunk_size: Option<usize>) {
        for a in self.encoder.mid_block.attentions.iter_mut().chain(self.decoder.mid_block.attentions.iter_mut()) {
            a.query_chunk_size = query_chunk_size;
        }
    }

    /// The attention modules (encoder then decoder).
    pub fn attentions(&self) -> impl Iterator<Item = &Attention> {
        self.encoder.mid_block.attentions.iter().chain(&self.decoder.mid_block.attentions)
    }

    /// Encodes images in `[-1, 1]` to the latent distribution.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, H, W]` -> mean/logvar/std `[batch, latent_channels, H/8, W/8]`
    pub fn encode(&self, x: Tensor<4>) -> DiagonalGaussianDistribution {
        self.encode_with(x, &mut VaeCapture::default())
    }

    pub fn encode_with(&self, x: Tensor<4>, capture: &mut VaeCapture) -> DiagonalGaussianDistribution {
        let h = self.encoder.forward(x, capture);
        let moments = match &self.quant_conv {
            Some(q) => q.forward(h),
            None => h,
        };
        capture.record("quant_conv", &moments);
        DiagonalGaussianDistribution::new(moments)
    }

    /// Decodes (unscaled) latents to the raw decoder output (images ~ in `[-1, 1]`, not clamped).
    /// Divide UNet latents by `scaling_factor` (and add `shift_factor`) first.
    ///
    /// # Shapes
    /// - `z`: `[batch, latent_channels, h, w]` -> `[batch, 3, 8h, 8w]`
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        self.decode_with(z, &mut VaeCapture::default())
    }

    pub fn decode_with(&self, z: Tensor<4>, capture: &mut VaeCapture) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => z,
        };
        capture.record("post_quant_conv", &z);
        self.decoder.forward(z, capture)
    }
}
