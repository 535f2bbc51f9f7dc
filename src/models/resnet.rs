//! Port of diffusers' `models/resnet.py` and `models/upsampling.py` / `downsampling.py`:
//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D`.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use super::nn::{Activation, Conv2d, GroupNorm, Linear};
use crate::weights::{ParamSpec, TensorMap};

/// How a `ResnetBlock2D` injects the time embedding (`resnet_time_scale_shift`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeEmbeddingNorm {
    /// `"default"`: `h = norm2(h + time_emb_proj(act(temb)))`
    Default,
    /// `"scale_shift"`: `scale, shift = time_emb_proj(act(temb)).chunk(2)`, `h = norm2(h) * (1 + scale) + shift`
    ScaleShift,
}

/// Constructor arguments of a `ResnetBlock2D` (diffusers' `__init__` parameters).
#[derive(Clone, Debug)]
pub struct ResnetBlock2DConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// `None`: no time embedding (VAE).
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub non_linearity: Activation,
    pub time_embedding_norm: TimeEmbeddingNorm,
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    fn time_emb_proj_out(&self) -> usize {
        match self.time_embedding_norm {
            TimeEmbeddingNorm::Default => self.out_channels,
            TimeEmbeddingNorm::ScaleShift => 2 * self.out_channels,
        }
    }
}

/// `ResnetBlock2D`: `norm1 -> act -> conv1 (+ time) -> norm2 -> act -> conv2`, plus the
/// (1x1-projected when the width changes) input, divided by `output_scale_factor`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    #[module(skip)]
    pub nonlinearity: Activation,
    #[module(skip)]
    pub time_embedding_norm: TimeEmbeddingNorm,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn specs(prefix: &str, c: &ResnetBlock2DConfig, out: &mut Vec<ParamSpec>) {
        GroupNorm::specs(&format!("{prefix}.norm1"), c.in_channels, out);
        Conv2d::specs(&format!("{prefix}.conv1"), c.in_channels, c.out_channels, 3, true, out);
        if let Some(temb) = c.temb_channels {
            Linear::specs(&format!("{prefix}.time_emb_proj"), temb, c.time_emb_proj_out(), true, out);
        }
        GroupNorm::specs(&format!("{prefix}.norm2"), c.out_channels, out);
        Conv2d::specs(&format!("{prefix}.conv2"), c.out_channels, c.out_channels, 3, true, out);
        if c.in_channels != c.out_channels {
            Conv2d::specs(&format!("{prefix}.conv_shortcut"), c.in_channels, c.out_channels, 1, true, out);
        }
    }

    pub fn from_map(prefix: &str, c: &ResnetBlock2DConfig, map: &mut TensorMap) -> Self {
        Self {
            norm1: GroupNorm::from_map(&format!("{prefix}.norm1"), c.groups, c.eps, map),
            conv1: Conv2d::from_map(&format!("{prefix}.conv1"), 1, 1, true, map),
            time_emb_proj: c.temb_channels.map(|_| Linear::from_map(&format!("{prefix}.time_emb_proj"), true, map)),
            norm2: GroupNorm::from_map(&format!("{prefix}.norm2"), c.groups, c.eps, map),
            conv2: Conv2d::from_map(&format!("{prefix}.conv2"), 1, 1, true, map),
            conv_shortcut: (c.in_channels != c.out_channels)
                .then(|| Conv2d::from_map(&format!("{prefix}.conv_shortcut"), 1, 0, true, map)),
            nonlinearity: c.non_linearity,
            time_embedding_norm: c.time_embedding_norm,
            output_scale_factor: c.output_scale_factor,
        }
    }

    /// # Shapes
    /// - `input`: `[batch, in, h, w]`, `temb`: `[batch, temb_channels]` (ignored when the block
    ///   has no `time_emb_proj`)
    /// - output: `[batch, out, h, w]`
    pub fn forward(&self, input: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let act = self.nonlinearity;
        let h = self.conv1.forward(act.forward(self.norm1.forward(input.clone())));
        let temb = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(t)) => {
                let t = proj.forward(act.forward(t.clone()));
                let [b, c] = t.dims();
                Some(t.reshape([b, c, 1, 1]))
            }
            _ => None,
        };
        let h = match (self.time_embedding_norm, temb) {
            (TimeEmbeddingNorm::Default, Some(t)) => self.norm2.forward(h + t),
            (TimeEmbeddingNorm::ScaleShift, Some(t)) => {
                let c = t.dims()[1] / 2;
                let scale = t.clone().narrow(1, 0, c);
                let shift = t.narrow(1, c, c);
                self.norm2.forward(h) * (scale + 1.0) + shift
            }
            (_, None) => self.norm2.forward(h),
        };
        let h = self.conv2.forward(act.forward(h));
        let input = match &self.conv_shortcut {
            Some(conv) => conv.forward(input),
            None => input,
        };
        let out = input + h;
        if self.output_scale_factor == 1.0 { out } else { out / self.output_scale_factor }
    }
}

/// `Downsample2D` with `use_conv=True`: a 3x3 stride-2 conv. `padding == 0` (VAE encoder) pads
/// `(0, 1, 0, 1)` first, as diffusers does.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
    pub padding: usize,
}

impl Downsample2D {
    pub fn specs(prefix: &str, channels: usize, out_channels: usize, out: &mut Vec<ParamSpec>) {
        Conv2d::specs(&format!("{prefix}.conv"), channels, out_channels, 3, true, out);
    }

    pub fn from_map(prefix: &str, padding: usize, map: &mut TensorMap) -> Self {
        Self { conv: Conv2d::from_map(&format!("{prefix}.conv"), 2, padding, true, map), padding }
    }

    /// `[batch, c, h, w] -> [batch, out, h', w']`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.padding == 0 { self.conv.forward_padded(x, [(0, 1), (0, 1)]) } else { self.conv.forward(x) }
    }
}

/// `Upsample2D` with `use_conv=True`: nearest-neighbour upsampling (x2, or to `output_size`)
/// then a 3x3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn specs(prefix: &str, channels: usize, out_channels: usize, out: &mut Vec<ParamSpec>) {
        Conv2d::specs(&format!("{prefix}.conv"), channels, out_channels, 3, true, out);
    }

    pub fn from_map(prefix: &str, map: &mut TensorMap) -> Self {
        Self { conv: Conv2d::from_map(&format!("{prefix}.conv"), 1, 1, true, map) }
    }

    /// `[batch, c, h, w] -> [batch, out, 2h, 2w]` (or `output_size`).
    pub fn forward(&self, x: Tensor<4>, output_size: Option<[usize; 2]>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let x = match output_size {
            Some(size) if size != [2 * h, 2 * w] => {
                interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size))
            }
            // nearest x2 as a broadcast: exact and differentiable on every backend
            _ => x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w]),
        };
        self.conv.forward(x)
    }
}
