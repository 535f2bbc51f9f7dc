//! Basic layers with PyTorch parameter layouts (`torch.nn.Linear`, `LayerNorm`, `Embedding`,
//! `Conv2d`, `GroupNorm`), built from a [`TensorMap`] of loaded weights.

use burn::module::{Module, Param};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Int, Tensor, activation};

use crate::weights::{ParamSpec, TensorMap};

/// `torch.nn.Linear`. `weight` keeps PyTorch's layout `[out_features, in_features]`.
/// Weights may be stored in f16 (see [`crate::weights::WeightStorage`]); all compute is f32:
/// f16 tensors are widened where they are used (the f32 copy lives only for that op).
pub fn compute_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == burn::tensor::DType::F32 { t } else { t.cast(burn::tensor::DType::F32) }
}

#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Parameter specs under `prefix` (`{prefix}.weight` `[out, in]`, `{prefix}.bias` `[out]`).
    pub fn specs(prefix: &str, in_features: usize, out_features: usize, bias: bool, out: &mut Vec<ParamSpec>) {
        out.push(ParamSpec::new(format!("{prefix}.weight"), &[out_features, in_features]));
        if bias {
            out.push(ParamSpec::new(format!("{prefix}.bias"), &[out_features]));
        }
    }

    pub fn from_map(prefix: &str, bias: bool, map: &mut TensorMap) -> Self {
        Self {
            weight: Param::from_tensor(map.take(&format!("{prefix}.weight"))),
            bias: bias.then(|| Param::from_tensor(map.take(&format!("{prefix}.bias")))),
        }
    }

    /// `[..., in] -> [..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::linear(x, compute_f32(self.weight.val()).transpose(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn specs(prefix: &str, dim: usize, out: &mut Vec<ParamSpec>) {
        out.push(ParamSpec::new(format!("{prefix}.weight"), &[dim]));
        out.push(ParamSpec::new(format!("{prefix}.bias"), &[dim]));
    }

    pub fn from_map(prefix: &str, eps: f64, map: &mut TensorMap) -> Self {
        Self {
            weight: Param::from_tensor(map.take(&format!("{prefix}.weight"))),
            bias: Param::from_tensor(map.take(&format!("{prefix}.bias"))),
            eps,
        }
    }

    /// `[..., dim] -> [..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::layer_norm(x, self.weight.val(), Some(self.bias.val()), self.eps)
    }
}

/// `torch.nn.Embedding`: `weight` `[num_embeddings, dim]`.
#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    pub fn specs(prefix: &str, n: usize, dim: usize, out: &mut Vec<ParamSpec>) {
        out.push(ParamSpec::new(format!("{prefix}.weight"), &[n, dim]));
    }

    pub fn from_map(prefix: &str, map: &mut TensorMap) -> Self {
        Self { weight: Param::from_tensor(map.take(&format!("{prefix}.weight"))) }
    }

    /// `[batch, seq] -> [batch, seq, dim]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        compute_f32(burn::tensor::module::embedding(self.weight.val(), ids))
    }
}

/// Activation functions named as in transformers' `ACT2FN` / diffusers' `get_activation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x text encoder)
    QuickGelu,
    /// exact erf GELU (OpenCLIP / SD 2.x text encoder)
    Gelu,
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`)
    GeluTanh,
    Silu,
    Relu,
}

impl Activation {
    /// Parses a transformers/diffusers activation name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "silu" | "swish" => Self::Silu,
            "relu" => Self::Relu,
            _ => return None,
        })
    }

    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Self::Gelu => activation::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::Silu => activation::silu(x),
            Self::Relu => activation::relu(x),
        }
    }
}

/// `torch.nn.Conv2d` (no dilation, no groups). `weight` keeps PyTorch's layout
/// `[out_channels, in_channels, kernel_h, kernel_w]`.
#[derive(Module, Debug)]
pub struct Conv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: usize,
    /// Symmetric zero padding on both spatial dimensions.
    pub padding: usize,
}

impl Conv2d {
    /// Parameter specs under `prefix` (`{prefix}.weight` `[out, in, k, k]`, `{prefix}.bias` `[out]`).
    pub fn specs(prefix: &str, in_channels: usize, out_channels: usize, kernel_size: usize, bias: bool, out: &mut Vec<ParamSpec>) {
        out.push(ParamSpec::new(format!("{prefix}.weight"), &[out_channels, in_channels, kernel_size, kernel_size]));
        if bias {
            out.push(ParamSpec::new(format!("{prefix}.bias"), &[out_channels]));
        }
    }

    pub fn from_map(prefix: &str, stride: usize, padding: usize, bias: bool, map: &mut TensorMap) -> Self {
        Self {
            weight: Param::from_tensor(map.take(&format!("{prefix}.weight"))),
            bias: bias.then(|| Param::from_tensor(map.take(&format!("{prefix}.bias")))),
            stride,
            padding,
        }
    }

    /// `[batch, in, h, w] -> [batch, out, h', w']` with the layer's own padding.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.padding;
        self.forward_padded(x, [(p, p), (p, p)])
    }

    /// Like [`Conv2d::forward`] with explicit `(begin, end)` zero padding per spatial dimension
    /// (`F.pad(x, (0, 1, 0, 1))` followed by an unpadded conv is `[(0, 1), (0, 1)]`).
    pub fn forward_padded(&self, x: Tensor<4>, padding: [(usize, usize); 2]) -> Tensor<4> {
        let options = ConvOptions::new_with_padding([self.stride; 2], padding, [1, 1], 1);
        conv2d(x, compute_f32(self.weight.val()), self.bias.as_ref().map(|b| b.val()), options)
    }
}

/// `torch.nn.GroupNorm` (affine) over `[batch, channels, ...]`: statistics per sample and group
/// of `channels / num_groups` consecutive channels.
#[derive(Module, Debug)]
pub struct GroupNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub num_groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn specs(prefix: &str, channels: usize, out: &mut Vec<ParamSpec>) {
        out.push(ParamSpec::new(format!("{prefix}.weight"), &[channels]));
        out.push(ParamSpec::new(format!("{prefix}.bias"), &[channels]));
    }

    pub fn from_map(prefix: &str, num_groups: usize, eps: f64, map: &mut TensorMap) -> Self {
        Self {
            weight: Param::from_tensor(map.take(&format!("{prefix}.weight"))),
            bias: Param::from_tensor(map.take(&format!("{prefix}.bias"))),
            num_groups,
            eps,
        }
    }

    /// `[batch, channels, ...] -> same shape` (`D >= 2`).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (b, c, g) = (dims[0], dims[1], self.num_groups);
        // statistics over [channels / groups, ..., last] reduced in two steps (last dimension,
        // then the rest): shorter f32 accumulations, closer to torch's cascaded sums
        let last = if D >= 3 { dims[D - 1] } else { 1 };
        let rest = dims.iter().product::<usize>() / (b * g * last);
        let x = x.reshape([b, g, rest, last]);
        let mean = x.clone().mean_dim(3).mean_dim(2);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(3).mean_dim(2);
        let x = (centered / (var + self.eps).sqrt()).reshape(dims);
        let mut affine = [1; D];
        affine[1] = c;
        x * self.weight.val().reshape(affine) + self.bias.val().reshape(affine)
    }
}
