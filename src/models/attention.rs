//! Port of diffusers' `Attention` with the default `AttnProcessor` (`attention_processor.py`),
//! `BasicTransformerBlock` / `FeedForward` / `GEGLU` (`attention.py`, `activations.py`) and
//! `Transformer2DModel` (`transformers/transformer_2d.py`, continuous input only).
//!
//! Attention is memory-efficient: queries are processed in chunks of `query_chunk_size`, so the
//! `[batch, heads, queries, keys]` probabilities of a 64x64 latent (4096 x 4096 per head) never
//! exist at once; each query row's softmax is independent, so chunking changes nothing.
//! Probabilities of chosen modules can be captured (by diffusers path) as device tensors.

use std::collections::{HashMap, HashSet};

use burn::module::Module;
use burn::tensor::{Tensor, activation};

use super::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::weights::{ParamSpec, TensorMap};

/// Default number of queries per attention chunk: at 512x512 (4096 queries) SD 1.x's
/// self-attention then holds `[batch, 8, 1024, 4096]` probabilities at a time.
pub const DEFAULT_QUERY_CHUNK_SIZE: usize = 1024;

/// Attention probabilities to keep during a forward pass, addressed by the diffusers path of
/// the `Attention` module (`mid_block.attentions.0.transformer_blocks.0.attn2`,
/// `decoder.mid_block.attentions.0`). Kept tensors stay on the device (no readback) and keep
/// their autodiff graph.
#[derive(Debug, Default)]
pub struct AttnCapture {
    /// Paths whose probabilities to keep.
    pub paths: HashSet<String>,
    /// Kept probabilities `[batch, heads, queries, keys]` by path (queries row-major over the
    /// latent grid for spatial inputs). A later pass overwrites an earlier one.
    pub probs: HashMap<String, Tensor<4>>,
}

impl AttnCapture {
    /// Captures the given paths.
    pub fn of<S: Into<String>>(paths: impl IntoIterator<Item = S>) -> Self {
        Self { paths: paths.into_iter().map(Into::into).collect(), probs: HashMap::new() }
    }

    pub fn wants(&self, path: &str) -> bool {
        !self.paths.is_empty() && self.paths.contains(path)
    }
}

/// `softmax(q k^T * scale) v`. Without `keep_probs`, on a wgpu / WebGPU device and outside
/// autodiff, this is the WGSL flash-attention kernel
/// ([`crate::kernels::flash_attention::try_flash_attention`]: no probabilities in memory at
/// all); otherwise [`sdpa_reference`] (query chunks of `query_chunk_size`).
///
/// # Shapes
/// - `q`: `[batch, heads, queries, d]`, `k`: `[batch, heads, keys, d]`, `v`: `[batch, heads, keys, dv]`
/// - output: `[batch, heads, queries, dv]`, probabilities `[batch, heads, queries, keys]`
pub fn scaled_dot_product_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    query_chunk_size: Option<usize>,
    keep_probs: bool,
) -> (Tensor<4>, Option<Tensor<4>>) {
    if !keep_probs && let Some(out) = crate::kernels::flash_attention::try_flash_attention(&q, &k, &v, scale) {
        return (out, None);
    }
    sdpa_reference(q, k, v, scale, query_chunk_size, keep_probs)
}

/// The plain-burn attention: `softmax(q k^T * scale) v`, the query dimension in chunks of
/// `query_chunk_size` (`None`: all at once), so at most `[batch, heads, chunk, keys]`
/// probabilities exist at a time. With `keep_probs` the probabilities are returned too
/// (concatenated over chunks). The reference of `shaders/flash_attention.wgsl`.
///
/// # Shapes
/// as [`scaled_dot_product_attention`]
pub fn sdpa_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    query_chunk_size: Option<usize>,
    keep_probs: bool,
) -> (Tensor<4>, Option<Tensor<4>>) {
    let nq = q.dims()[2];
    let chunk = query_chunk_size.unwrap_or(nq).clamp(1, nq.max(1));
    let kt = k.swap_dims(2, 3);
    let mut outs = Vec::with_capacity(nq.div_ceil(chunk));
    let mut probs = Vec::new();
    let mut start = 0;
    while start < nq {
        let len = chunk.min(nq - start);
        let qc = if len == nq { q.clone() } else { q.clone().narrow(2, start, len) };
        let p = activation::softmax(qc.matmul(kt.clone()) * scale, 3);
        if keep_probs {
            probs.push(p.clone());
        }
        outs.push(p.matmul(v.clone()));
        start += len;
    }
    let cat = |mut v: Vec<Tensor<4>>| if v.len() == 1 { v.pop().unwrap() } else { Tensor::cat(v, 2) };
    (cat(outs), keep_probs.then(|| cat(probs)))
}

/// Constructor arguments of an [`Attention`] (diffusers' `Attention.__init__`).
#[derive(Clone, Debug)]
pub struct AttentionConfig {
    pub query_dim: usize,
    /// Width of the context for cross-attention; `None`: self-attention.
    pub cross_attention_dim: Option<usize>,
    pub heads: usize,
    pub dim_head: usize,
    /// Bias of `to_q`/`to_k`/`to_v` (false in UNet transformer blocks, true in the VAE).
    pub bias: bool,
    pub out_bias: bool,
    pub upcast_attention: bool,
    /// `GroupNorm` applied to the input first (VAE mid-block attention): groups and eps.
    pub norm_num_groups: Option<(usize, f64)>,
    pub residual_connection: bool,
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// The attention of UNet transformer blocks (`attention_bias=False`, output bias).
    pub fn transformer(query_dim: usize, cross_attention_dim: Option<usize>, heads: usize, dim_head: usize, upcast: bool) -> Self {
        Self {
            query_dim,
            cross_attention_dim,
            heads,
            dim_head,
            bias: false,
            out_bias: true,
            upcast_attention: upcast,
            norm_num_groups: None,
            residual_connection: false,
            rescale_output_factor: 1.0,
        }
    }
}

/// diffusers' `Attention` with `AttnProcessor` semantics. Weights: `to_q`, `to_k`, `to_v`,
/// `to_out.0` (`to_out.1` is dropout), optional `group_norm`.
#[derive(Module, Debug)]
pub struct Attention {
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_out.0`
    pub to_out: Linear,
    pub heads: usize,
    /// `dim_head^-0.5`
    pub scale: f64,
    /// diffusers computes the scores in f32 for fp16 models; all compute here is f32, so the
    /// flag is kept for reference only.
    pub upcast_attention: bool,
    pub residual_connection: bool,
    pub rescale_output_factor: f64,
    /// Queries per chunk (`None`: all at once); see [`scaled_dot_product_attention`].
    pub query_chunk_size: Option<usize>,
    /// diffusers module path: the [`AttnCapture`] key.
    pub path: String,
}

impl Attention {
    pub fn specs(prefix: &str, c: &AttentionConfig, out: &mut Vec<ParamSpec>) {
        let inner = c.heads * c.dim_head;
        let ctx = c.cross_attention_dim.unwrap_or(c.query_dim);
        if c.norm_num_groups.is_some() {
            GroupNorm::specs(&format!("{prefix}.group_norm"), c.query_dim, out);
        }
        Linear::specs(&format!("{prefix}.to_q"), c.query_dim, inner, c.bias, out);
        Linear::specs(&format!("{prefix}.to_k"), ctx, inner, c.bias, out);
        Linear::specs(&format!("{prefix}.to_v"), ctx, inner, c.bias, out);
        Linear::specs(&format!("{prefix}.to_out.0"), inner, c.query_dim, c.out_bias, out);
    }

    pub fn from_map(prefix: &str, c: &AttentionConfig, map: &mut TensorMap) -> Self {
        Self {
            group_norm: c.norm_num_groups.map(|(g, eps)| GroupNorm::from_map(&format!("{prefix}.group_norm"), g, eps, map)),
            to_q: Linear::from_map(&format!("{prefix}.to_q"), c.bias, map),
            to_k: Linear::from_map(&format!("{prefix}.to_k"), c.bias, map),
            to_v: Linear::from_map(&format!("{prefix}.to_v"), c.bias, map),
            to_out: Linear::from_map(&format!("{prefix}.to_out.0"), c.out_bias, map),
            heads: c.heads,
            scale: (c.dim_head as f64).powf(-0.5),
            upcast_attention: c.upcast_attention,
            residual_connection: c.residual_connection,
            rescale_output_factor: c.rescale_output_factor,
            query_chunk_size: Some(DEFAULT_QUERY_CHUNK_SIZE),
            path: prefix.to_string(),
        }
    }

    /// Attention over a token sequence (self-attention when `encoder_hidden_states` is `None`).
    ///
    /// # Shapes
    /// - `hidden_states`: `[batch, queries, query_dim]`, `encoder_hidden_states`: `[batch, keys, context_dim]`
    /// - output: `[batch, queries, query_dim]`
    pub fn forward(&self, hidden_states: Tensor<3>, encoder_hidden_states: Option<Tensor<3>>, capture: &mut AttnCapture) -> Tensor<3> {
        let [b, n, _] = hidden_states.dims();
        let context = encoder_hidden_states.unwrap_or_else(|| hidden_states.clone());
        let s = context.dims()[1];
        let h = self.heads;
        let q = self.to_q.forward(hidden_states);
        let inner = q.dims()[2];
        let hd = inner / h;
        let split = |t: Tensor<3>, len: usize| t.reshape([b, len, h, hd]).swap_dims(1, 2);
        let q = split(q, n);
        let k = split(self.to_k.forward(context.clone()), s);
        let v = split(self.to_v.forward(context), s);
        let keep = capture.wants(&self.path);
        let (out, probs) = scaled_dot_product_attention(q, k, v, self.scale, self.query_chunk_size, keep);
        if let Some(p) = probs {
            capture.probs.insert(self.path.clone(), p);
        }
        self.to_out.forward(out.swap_dims(1, 2).reshape([b, n, inner]))
    }

    /// Self-attention over the pixels of a feature map (VAE mid block): optional `group_norm`,
    /// attention over `h*w` tokens, optional residual, `/ rescale_output_factor`.
    ///
    /// # Shapes
    /// - `x`: `[batch, c, h, w]` -> `[batch, c, h, w]`
    pub fn forward_spatial(&self, x: Tensor<4>, capture: &mut AttnCapture) -> Tensor<4> {
        let [b, c, hh, ww] = x.dims();
        let residual = x.clone();
        let x = match &self.group_norm {
            Some(norm) => norm.forward(x),
            None => x,
        };
        let x = x.reshape([b, c, hh * ww]).swap_dims(1, 2);
        let x = self.forward(x, None, capture).swap_dims(1, 2).reshape([b, c, hh, ww]);
        let x = if self.residual_connection { x + residual } else { x };
        if self.rescale_output_factor == 1.0 { x } else { x / self.rescale_output_factor }
    }
}

/// `GEGLU`: `proj` to `2 * inner`, then `hidden * gelu(gate)` (exact erf GELU).
#[derive(Module, Debug)]
pub struct GEGLU {
    pub proj: Linear,
}

impl GEGLU {
    /// `[..., dim] -> [..., inner]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.proj.forward(x);
        let inner = x.dims()[2] / 2;
        let hidden = x.clone().narrow(2, 0, inner);
        let gate = x.narrow(2, inner, inner);
        hidden * activation::gelu(gate)
    }
}

/// `FeedForward` with `activation_fn="geglu"`, `mult=4`: `net.0` (GEGLU), `net.1` (dropout),
/// `net.2` (Linear).
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `net.0`
    pub net_0: GEGLU,
    /// `net.2`
    pub net_2: Linear,
}

impl FeedForward {
    pub fn specs(prefix: &str, dim: usize, out: &mut Vec<ParamSpec>) {
        let inner = 4 * dim;
        Linear::specs(&format!("{prefix}.net.0.proj"), dim, 2 * inner, true, out);
        Linear::specs(&format!("{prefix}.net.2"), inner, dim, true, out);
    }

    pub fn from_map(prefix: &str, map: &mut TensorMap) -> Self {
        Self {
            net_0: GEGLU { proj: Linear::from_map(&format!("{prefix}.net.0.proj"), true, map) },
            net_2: Linear::from_map(&format!("{prefix}.net.2"), true, map),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.net_2.forward(self.net_0.forward(x))
    }
}

/// Constructor arguments of a [`Transformer2DModel`] (and its `BasicTransformerBlock`s).
#[derive(Clone, Debug)]
pub struct Transformer2DConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    /// Number of `BasicTransformerBlock`s (`transformer_layers_per_block`).
    pub num_layers: usize,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    /// `Linear` `proj_in`/`proj_out` (SD 2.x) instead of 1x1 convolutions (SD 1.x).
    pub use_linear_projection: bool,
    /// `attn1` attends to the context too.
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
}

impl Transformer2DConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    fn attn1(&self) -> AttentionConfig {
        let ctx = self.only_cross_attention.then_some(self.cross_attention_dim);
        AttentionConfig::transformer(self.inner_dim(), ctx, self.num_attention_heads, self.attention_head_dim, self.upcast_attention)
    }

    fn attn2(&self) -> AttentionConfig {
        let ctx = Some(self.cross_attention_dim);
        AttentionConfig::transformer(self.inner_dim(), ctx, self.num_attention_heads, self.attention_head_dim, self.upcast_attention)
    }
}

/// `BasicTransformerBlock` (`norm_type="layer_norm"`): self-attention, cross-attention and
/// GEGLU feed-forward, each pre-LayerNorm (eps 1e-5) with a residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
    pub only_cross_attention: bool,
}

const TRANSFORMER_LAYER_NORM_EPS: f64 = 1e-5;
const TRANSFORMER_GROUP_NORM_EPS: f64 = 1e-6;

impl BasicTransformerBlock {
    pub fn specs(prefix: &str, c: &Transformer2DConfig, out: &mut Vec<ParamSpec>) {
        let dim = c.inner_dim();
        LayerNorm::specs(&format!("{prefix}.norm1"), dim, out);
        Attention::specs(&format!("{prefix}.attn1"), &c.attn1(), out);
        LayerNorm::specs(&format!("{prefix}.norm2"), dim, out);
        Attention::specs(&format!("{prefix}.attn2"), &c.attn2(), out);
        LayerNorm::specs(&format!("{prefix}.norm3"), dim, out);
        FeedForward::specs(&format!("{prefix}.ff"), dim, out);
    }

    pub fn from_map(prefix: &str, c: &Transformer2DConfig, map: &mut TensorMap) -> Self {
        let ln = |n: &str, map: &mut TensorMap| LayerNorm::from_map(&format!("{prefix}.{n}"), TRANSFORMER_LAYER_NORM_EPS, map);
        Self {
            norm1: ln("norm1", map),
            attn1: Attention::from_map(&format!("{prefix}.attn1"), &c.attn1(), map),
            norm2: ln("norm2", map),
            attn2: Attention::from_map(&format!("{prefix}.attn2"), &c.attn2(), map),
            norm3: ln("norm3", map),
            ff: FeedForward::from_map(&format!("{prefix}.ff"), map),
            only_cross_attention: c.only_cross_attention,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, tokens, dim]`, `encoder_hidden_states`: `[batch, keys, context_dim]`
    pub fn forward(&self, x: Tensor<3>, encoder_hidden_states: &Tensor<3>, capture: &mut AttnCapture) -> Tensor<3> {
        let ctx1 = self.only_cross_attention.then(|| encoder_hidden_states.clone());
        let x = self.attn1.forward(self.norm1.forward(x.clone()), ctx1, capture) + x;
        let x = self.attn2.forward(self.norm2.forward(x.clone()), Some(encoder_hidden_states.clone()), capture) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `proj_in` / `proj_out` of a [`Transformer2DModel`]: 1x1 conv (SD 1.x) or Linear (SD 2.x).
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn specs(prefix: &str, linear: bool, in_dim: usize, out_dim: usize, out: &mut Vec<ParamSpec>) {
        if linear {
            Linear::specs(prefix, in_dim, out_dim, true, out);
        } else {
            Conv2d::specs(prefix, in_dim, out_dim, 1, true, out);
        }
    }

    fn from_map(prefix: &str, linear: bool, map: &mut TensorMap) -> Self {
        if linear { Self::Linear(Linear::from_map(prefix, true, map)) } else { Self::Conv(Conv2d::from_map(prefix, 1, 0, true, map)) }
    }
}

/// `Transformer2DModel` for continuous (latent) inputs: `GroupNorm(eps 1e-6) -> proj_in ->
/// BasicTransformerBlock x num_layers -> proj_out`, plus the input.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2DModel {
    pub fn specs(prefix: &str, c: &Transformer2DConfig, out: &mut Vec<ParamSpec>) {
        let inner = c.inner_dim();
        GroupNorm::specs(&format!("{prefix}.norm"), c.in_channels, out);
        Projection::specs(&format!("{prefix}.proj_in"), c.use_linear_projection, c.in_channels, inner, out);
        for i in 0..c.num_layers {
            BasicTransformerBlock::specs(&format!("{prefix}.transformer_blocks.{i}"), c, out);
        }
        Projection::specs(&format!("{prefix}.proj_out"), c.use_linear_projection, inner, c.in_channels, out);
    }

    pub fn from_map(prefix: &str, c: &Transformer2DConfig, map: &mut TensorMap) -> Self {
        Self {
            norm: GroupNorm::from_map(&format!("{prefix}.norm"), c.norm_num_groups, TRANSFORMER_GROUP_NORM_EPS, map),
            proj_in: Projection::from_map(&format!("{prefix}.proj_in"), c.use_linear_projection, map),
            transformer_blocks: (0..c.num_layers)
                .map(|i| BasicTransformerBlock::from_map(&format!("{prefix}.transformer_blocks.{i}"), c, map))
                .collect(),
            proj_out: Projection::from_map(&format!("{prefix}.proj_out"), c.use_linear_projection, map),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, c, h, w]`, `encoder_hidden_states`: `[batch, keys, cross_attention_dim]`
    /// - output: `[batch, c, h, w]`
    pub fn forward(&self, x: Tensor<4>, encoder_hidden_states: &Tensor<3>, capture: &mut AttnCapture) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = self.norm.forward(x);
        let to_tokens = |t: Tensor<4>| {
            let d = t.dims()[1];
            t.permute([0, 2, 3, 1]).reshape([b, h * w, d])
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(x)),
            Projection::Linear(lin) => lin.forward(to_tokens(x)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, encoder_hidden_states, capture);
        }
        let to_map = |t: Tensor<3>| {
            let d = t.dims()[2];
            t.reshape([b, h, w, d]).permute([0, 3, 1, 2])
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_map(tokens)),
            Projection::Linear(lin) => to_map(lin.forward(tokens)),
        };
        debug_assert_eq!(out.dims()[1], c);
        out + residual
    }

    /// The attention modules of this transformer, in forward order.
    pub fn attentions(&self) -> impl Iterator<Item = &Attention> {
        self.transformer_blocks.iter().flat_map(|b| [&b.attn1, &b.attn2])
    }

    pub fn attentions_mut(&mut self) -> impl Iterator<Item = &mut Attention> {
        self.transformer_blocks.iter_mut().flat_map(|b| [&mut b.attn1, &mut b.attn2])
    }
}
