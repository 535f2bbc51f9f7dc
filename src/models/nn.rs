//! Basic layers with PyTorch parameter layouts (`torch.nn.Linear`, `LayerNorm`, `Embedding`),
//! built from a [`TensorMap`] of loaded weights.

use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor, activation};

use crate::weights::{ParamSpec, TensorMap};

/// `torch.nn.Linear`. `weight` keeps PyTorch's layout `[out_features, in_features]`.
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
        burn::tensor::module::linear(x, self.weight.val().transpose(), self.bias.as_ref().map(|b| b.val()))
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
        burn::tensor::module::embedding(self.weight.val(), ids)
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
