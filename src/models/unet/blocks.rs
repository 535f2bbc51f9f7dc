//! Port of the SD blocks of diffusers' `unets/unet_2d_blocks.py`: `CrossAttnDownBlock2D`,
//! `DownBlock2D`, `CrossAttnUpBlock2D`, `UpBlock2D`, `UNetMidBlock2DCrossAttn` and
//! `UNetMidBlock2D` (also the VAE's mid block).

use burn::module::Module;
use burn::tensor::Tensor;

use crate::models::attention::{Attention, AttentionConfig, AttnCapture, Transformer2DConfig, Transformer2DModel};
use crate::models::nn::Activation;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, TimeEmbeddingNorm, Upsample2D};
use crate::weights::{ParamSpec, TensorMap};

/// Constructor arguments of a UNet block: the parameters diffusers' `get_down_block` /
/// `get_mid_block` / `get_up_block` receive (see `UNet2DConditionConfig::down_block_args`).
#[derive(Clone, Debug)]
pub struct BlockArgs {
    /// Resnets in the block (up blocks: `layers_per_block + 1`).
    pub num_layers: usize,
    pub transformer_layers_per_block: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Up blocks: width of the previous (lower-resolution) block's output.
    pub prev_output_channel: usize,
    pub temb_channels: usize,
    /// `add_downsample` / `add_upsample`.
    pub add_sampler: bool,
    pub resnet_eps: f64,
    pub resnet_act_fn: Activation,
    pub resnet_groups: usize,
    pub cross_attention_dim: usize,
    pub num_attention_heads: usize,
    pub downsample_padding: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: TimeEmbeddingNorm,
    /// Resnet `output_scale_factor` (`mid_block_scale_factor` for the mid block, else 1).
    pub output_scale_factor: f64,
}

impl BlockArgs {
    pub fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.resnet_groups,
            eps: self.resnet_eps,
            non_linearity: self.resnet_act_fn,
            time_embedding_norm: self.resnet_time_scale_shift,
            output_scale_factor: self.output_scale_factor,
        }
    }

    /// `Transformer2DModel(num_attention_heads, channels // num_attention_heads, in_channels=channels, ...)`
    pub fn transformer(&self, channels: usize) -> Transformer2DConfig {
        Transformer2DConfig {
            num_attention_heads: self.num_attention_heads,
            attention_head_dim: channels / self.num_attention_heads,
            in_channels: channels,
            num_layers: self.transformer_layers_per_block,
            cross_attention_dim: self.cross_attention_dim,
            norm_num_groups: self.resnet_groups,
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: self.only_cross_attention,
            upcast_attention: self.upcast_attention,
        }
    }

    fn down_resnet(&self, j: usize) -> ResnetBlock2DConfig {
        self.resnet(if j == 0 { self.in_channels } else { self.out_channels }, self.out_channels)
    }

    /// Up blocks: resnet `j` takes the previous output concatenated with a skip connection.
    fn up_resnet(&self, j: usize) -> ResnetBlock2DConfig {
        let res_skip = if j == self.num_layers - 1 { self.in_channels } else { self.out_channels };
        let resnet_in = if j == 0 { self.prev_output_channel } else { self.out_channels };
        self.resnet(resnet_in + res_skip, self.out_channels)
    }
}

fn resnet_specs(prefix: &str, n: usize, cfg: impl Fn(usize) -> ResnetBlock2DConfig, out: &mut Vec<ParamSpec>) {
    for j in 0..n {
        ResnetBlock2D::specs(&format!("{prefix}.resnets.{j}"), &cfg(j), out);
    }
}

fn resnets_from_map(prefix: &str, n: usize, cfg: impl Fn(usize) -> ResnetBlock2DConfig, map: &mut TensorMap) -> Vec<ResnetBlock2D> {
    (0..n).map(|j| ResnetBlock2D::from_map(&format!("{prefix}.resnets.{j}"), &cfg(j), map)).collect()
}

fn transformer_specs(prefix: &str, n: usize, c: &Transformer2DConfig, out: &mut Vec<ParamSpec>) {
    for j in 0..n {
        Transformer2DModel::specs(&format!("{prefix}.attentions.{j}"), c, out);
    }
}

fn transformers_from_map(prefix: &str, n: usize, c: &Transformer2DConfig, map: &mut TensorMap) -> Vec<Transformer2DModel> {
    (0..n).map(|j| Transformer2DModel::from_map(&format!("{prefix}.attentions.{j}"), c, map)).collect()
}

fn downsampler_specs(prefix: &str, a: &BlockArgs, out: &mut Vec<ParamSpec>) {
    if a.add_sampler {
        Downsample2D::specs(&format!("{prefix}.downsamplers.0"), a.out_channels, a.out_channels, out);
    }
}

fn downsampler_from_map(prefix: &str, a: &BlockArgs, map: &mut TensorMap) -> Option<Downsample2D> {
    a.add_sampler.then(|| Downsample2D::from_map(&format!("{prefix}.downsamplers.0"), a.downsample_padding, map))
}

fn upsampler_specs(prefix: &str, a: &BlockArgs, out: &mut Vec<ParamSpec>) {
    if a.add_sampler {
        Upsample2D::specs(&format!("{prefix}.upsamplers.0"), a.out_channels, a.out_channels, out);
    }
}

fn upsampler_from_map(prefix: &str, a: &BlockArgs, map: &mut TensorMap) -> Option<Upsample2D> {
    a.add_sampler.then(|| Upsample2D::from_map(&format!("{prefix}.upsamplers.0"), map))
}

/// `CrossAttnDownBlock2D`: (resnet, transformer) x `num_layers`, then an optional stride-2
/// downsampler (`downsamplers.0`).
#[derive(Module, Debug)]
pub struct CrossAttnDownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    /// `downsamplers.0`
    pub downsamplers: Option<Downsample2D>,
}

impl CrossAttnDownBlock2D {
    pub fn specs(prefix: &str, a: &BlockArgs, out: &mut Vec<ParamSpec>) {
        resnet_specs(prefix, a.num_layers, |j| a.down_resnet(j), out);
        transformer_specs(prefix, a.num_layers, &a.transformer(a.out_channels), out);
        downsampler_specs(prefix, a, out);
    }

    pub fn from_map(prefix: &str, a: &BlockArgs, map: &mut TensorMap) -> Self {
        Self {
            resnets: resnets_from_map(prefix, a.num_layers, |j| a.down_resnet(j), map),
            attentions: transformers_from_map(prefix, a.num_layers, &a.transformer(a.out_channels), map),
            downsamplers: downsampler_from_map(prefix, a, map),
        }
    }

    /// Returns the block output and the skip connections it adds (one per layer, plus the
    /// downsampled output).
    pub fn forward(&self, mut x: Tensor<4>, temb: &Tensor<2>, ehs: &Tensor<3>, capture: &mut AttnCapture) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut res = Vec::with_capacity(self.resnets.len() + 1);
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            x = attn.forward(resnet.forward(x, Some(temb)), ehs, capture);
            res.push(x.clone());
        }
        if let Some(down) = &self.downsamplers {
            x = down.forward(x);
            res.push(x.clone());
        }
        (x, res)
    }
}

/// `DownBlock2D`: resnets and an optional downsampler, no attention.
#[derive(Module, Debug)]
pub struct DownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// `downsamplers.0`
    pub downsamplers: Option<Downsample2D>,
}

impl DownBlock2D {
    pub fn specs(prefix: &str, a: &BlockArgs, out: &mut Vec<ParamSpec>) {
        resnet_specs(prefix, a.num_layers, |j| a.down_resnet(j), out);
        downsampler_specs(prefix, a, out);
    }

    pub fn from_map(prefix: &str, a: &BlockArgs, map: &mut TensorMap) -> Self {
        Self {
            resnets: resnets_from_map(prefix, a.num_layers, |j| a.down_resnet(j), map),
            downsamplers: downsampler_from_map(prefix, a, map),
        }
    }

    pub fn forward(&self, mut x: Tensor<4>, temb: &Tensor<2>) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut res = Vec::with_capacity(self.resnets.len() + 1);
        for resnet in &self.resnets {
            x = resnet.forward(x, Some(temb));
            res.push(x.clone());
        }
        if let Some(down) = &self.downsamplers {
            x = down.forward(x);
            res.push(x.clone());
        }
        (x, res)
    }
}

/// Concatenates the last skip connection (popped from `res`) to `x` along channels.
fn cat_skip(x: Tensor<4>, res: &mut Vec<Tensor<4>>) -> Tensor<4> {
    let skip = res.pop().expect("an up block got fewer skip connections than it has resnets");
    Tensor::cat(vec![x, skip], 1)
}

/// `CrossAttnUpBlock2D`: (concat skip, resnet, transformer) x `num_layers`, then an optional
/// nearest x2 upsampler (`upsamplers.0`).
#[derive(Module, Debug)]
pub struct CrossAttnUpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    /// `upsamplers.0`
    pub upsamplers: Option<Upsample2D>,
}

impl CrossAttnUpBlock2D {
    pub fn specs(prefix: &str, a: &BlockArgs, out: &mut Vec<ParamSpec>) {
        resnet_specs(prefix, a.num_layers, |j| a.up_resnet(j), out);
        transformer_specs(prefix, a.num_layers, &a.transformer(a.out_channels), out);
        upsampler_specs(prefix, a, out);
    }

    pub fn from_map(prefix: &str, a: &BlockArgs, map: &mut TensorMap) -> Self {
        Self {
            resnets: resnets_from_map(prefix, a.num_layers, |j| a.up_resnet(j), map),
            attentions: transformers_from_map(prefix, a.num_layers, &a.transformer(a.out_channels), map),
            upsamplers: upsampler_from_map(prefix, a, map),
        }
    }

    /// `res`: this block's skip connections (`len == resnets.len()`), consumed from the end.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        mut res: Vec<Tensor<4>>,
        ehs: &Tensor<3>,
        upsample_size: Option<[usize; 2]>,
        capture: &mut AttnCapture,
    ) -> Tensor<4> {
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            x = attn.forward(resnet.forward(cat_skip(x, &mut res), Some(temb)), ehs, capture);
        }
        match &self.upsamplers {
            Some(up) => up.forward(x, upsample_size),
            None => x,
        }
    }
}

/// `UpBlock2D`: (concat skip, resnet) x `num_layers` and an optional upsampler.
#[derive(Module, Debug)]
pub struct UpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// `upsamplers.0`
    pub upsamplers: Option<Upsample2D>,
}

impl UpBlock2D {
    pub fn specs(prefix: &str, a: &BlockArgs, out: &mut Vec<ParamSpec>) {
        resnet_specs(prefix, a.num_layers, |j| a.up_resnet(j), out);
        upsampler_specs(prefix, a, out);
    }

    pub fn from_map(prefix: &str, a: &BlockArgs, map: &mut TensorMap) -> Self {
        Self {
            resnets: resnets_from_map(prefix, a.num_layers, |j| a.up_resnet(j), map),
            upsamplers: upsampler_from_map(prefix, a, map),
        }
    }

    pub fn forward(&self, mut x: Tensor<4>, temb: &Tensor<2>, mut res: Vec<Tensor<4>>, upsample_size: Option<[usize; 2]>) -> Tensor<4> {
        for resnet in &self.resnets {
            x = resnet.forward(cat_skip(x, &mut res), Some(temb));
        }
        match &self.upsamplers {
            Some(up) => up.forward(x, upsample_size),
            None => x,
        }
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) x `num_layers` (1 in SD).
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    pub fn specs(prefix: &str, a: &BlockArgs, out: &mut Vec<ParamSpec>) {
        let c = a.in_channels;
        resnet_specs(prefix, a.num_layers + 1, |_| a.resnet(c, c), out);
        transformer_specs(prefix, a.num_layers, &a.transformer(c), out);
    }

    pub fn from_map(prefix: &str, a: &BlockArgs, map: &mut TensorMap) -> Self {
        let c = a.in_channels;
        Self {
            resnets: resnets_from_map(prefix, a.num_layers + 1, |_| a.resnet(c, c), map),
            attentions: transformers_from_map(prefix, a.num_layers, &a.transformer(c), map),
        }
    }

    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, ehs: &Tensor<3>, capture: &mut AttnCapture) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, ehs, capture), Some(temb));
        }
        x
    }
}

/// Constructor arguments of a [`UNetMidBlock2D`].
#[derive(Clone, Debug)]
pub struct UNetMidBlock2DConfig {
    pub in_channels: usize,
    pub temb_channels: Option<usize>,
    /// (attention, resnet) pairs after the first resnet (1 in the VAE, 0 in a UNet).
    pub num_layers: usize,
    pub resnet_eps: f64,
    pub resnet_act_fn: Activation,
    pub resnet_groups: usize,
    pub resnet_time_scale_shift: TimeEmbeddingNorm,
    pub add_attention: bool,
    /// Head width of the attention (heads = `in_channels / attention_head_dim`).
    pub attention_head_dim: usize,
    pub output_scale_factor: f64,
}

impl UNetMidBlock2DConfig {
    fn resnet(&self) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            in_channels: self.in_channels,
            out_channels: self.in_channels,
            temb_channels: self.temb_channels,
            groups: self.resnet_groups,
            eps: self.resnet_eps,
            non_linearity: self.resnet_act_fn,
            time_embedding_norm: self.resnet_time_scale_shift,
            output_scale_factor: self.output_scale_factor,
        }
    }

    /// diffusers' `Attention(in_channels, heads=in // head_dim, dim_head=head_dim,
    /// norm_num_groups=resnet_groups, residual_connection=True, bias=True, ...)`.
    fn attention(&self) -> AttentionConfig {
        AttentionConfig {
            query_dim: self.in_channels,
            cross_attention_dim: None,
            heads: self.in_channels / self.attention_head_dim,
            dim_head: self.attention_head_dim,
            bias: true,
            out_bias: true,
            upcast_attention: false,
            norm_num_groups: (self.resnet_time_scale_shift == TimeEmbeddingNorm::Default).then_some((self.resnet_groups, self.resnet_eps)),
            residual_connection: true,
            rescale_output_factor: self.output_scale_factor,
        }
    }
}

/// `UNetMidBlock2D`: resnet, then (optional self-attention over pixels, resnet) x `num_layers`.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// Empty when `add_attention` is false.
    pub attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    pub fn specs(prefix: &str, c: &UNetMidBlock2DConfig, out: &mut Vec<ParamSpec>) {
        resnet_specs(prefix, c.num_layers + 1, |_| c.resnet(), out);
        if c.add_attention {
            for j in 0..c.num_layers {
                Attention::specs(&format!("{prefix}.attentions.{j}"), &c.attention(), out);
            }
        }
    }

    pub fn from_map(prefix: &str, c: &UNetMidBlock2DConfig, map: &mut TensorMap) -> Self {
        let attentions = if c.add_attention {
            (0..c.num_layers).map(|j| Attention::from_map(&format!("{prefix}.attentions.{j}"), &c.attention(), map)).collect()
        } else {
            Vec::new()
        };
        Self { resnets: resnets_from_map(prefix, c.num_layers + 1, |_| c.resnet(), map), attentions }
    }

    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>, capture: &mut AttnCapture) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, temb);
        for (j, resnet) in self.resnets[1..].iter().enumerate() {
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward_spatial(x, capture);
            }
            x = resnet.forward(x, temb);
        }
        x
    }
}
