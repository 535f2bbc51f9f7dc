//! Port of diffusers' `UNet2DConditionModel` (`unets/unet_2d_condition.py`) for SD 1.x / 2.x
//! configs, with attention-probability and intermediate capture ([`UNetCapture`]) and an early
//! stop for losses that only need the first part of the network.

pub mod blocks;
pub mod checkpoint;
pub mod config;

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

pub use blocks::{BlockArgs, CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D, UNetMidBlock2D, UNetMidBlock2DConfig, UNetMidBlock2DCrossAttn, UpBlock2D};
pub use checkpoint::UNetTape;
pub use config::{DownBlockType, MidBlockType, PerBlock, UNet2DConditionConfig, UpBlockType};

use super::attention::{Attention, AttnCapture, Transformer2DModel};
use super::embeddings::{TimestepEmbedding, Timesteps};
use super::nn::{Activation, Conv2d, GroupNorm};
use crate::weights::{ParamSpec, TensorMap};

/// What a [`UNet2DConditionModel::forward`] pass should capture, and what it captured. All
/// captured tensors stay on the device (no readback) and keep their autodiff graph.
#[derive(Debug, Default)]
pub struct UNetCapture {
    /// Attention probabilities by module path
    /// (`up_blocks.1.attentions.0.transformer_blocks.0.attn2`); see
    /// [`UNet2DConditionModel::attention_paths`].
    pub attn: AttnCapture,
    /// Keep the outputs of `time_proj`, `time_embedding` (in [`Self::embeddings`]) and of
    /// `conv_in`, each `down_blocks.{i}` (hidden states, before the skip tuple), `mid_block`,
    /// each `up_blocks.{i}` (in [`Self::activations`]), for the whole batch.
    pub intermediates: bool,
    /// Stop after this module: a stage (`conv_in`, `down_blocks.{i}`, `mid_block`,
    /// `up_blocks.{i}`) or any path inside one (the stage containing it is completed).
    /// `forward` then returns that stage's output.
    pub stop_after: Option<String>,
    /// `[batch, c, h, w]` stage outputs by name.
    pub activations: HashMap<String, Tensor<4>>,
    /// `[batch, dim]`: `time_proj`, `time_embedding` (before `time_embedding_act_fn`).
    pub embeddings: HashMap<String, Tensor<2>>,
}

impl UNetCapture {
    /// Captures nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Captures the attention probabilities of the given module paths.
    pub fn attention<S: Into<String>>(paths: impl IntoIterator<Item = S>) -> Self {
        Self { attn: AttnCapture::of(paths), ..Self::default() }
    }

    pub fn with_intermediates(mut self) -> Self {
        self.intermediates = true;
        self
    }

    pub fn with_stop_after(mut self, path: impl Into<String>) -> Self {
        self.stop_after = Some(path.into());
        self
    }

    fn stops_at(&self, stage: &str) -> bool {
        self.stop_after.as_deref().is_some_and(|p| stage_contains(stage, p))
    }

    /// Records a stage output; true when the pass should stop here.
    fn record(&mut self, stage: &str, t: &Tensor<4>) -> bool {
        if self.intermediates {
            self.activations.insert(stage.to_string(), t.clone());
        }
        self.stops_at(stage)
    }

    fn record_embedding(&mut self, name: &str, t: &Tensor<2>) {
        if self.intermediates {
            self.embeddings.insert(name.to_string(), t.clone());
        }
    }
}

fn stage_contains(stage: &str, path: &str) -> bool {
    path == stage || path.strip_prefix(stage).is_some_and(|rest| rest.starts_with('.'))
}

/// A down block (`down_block_types`).
#[derive(Module, Debug)]
pub enum DownBlock {
    CrossAttnDownBlock2D(CrossAttnDownBlock2D),
    DownBlock2D(DownBlock2D),
}

impl DownBlock {
    fn transformers(&self) -> &[Transformer2DModel] {
        match self {
            Self::CrossAttnDownBlock2D(b) => &b.attentions,
            Self::DownBlock2D(_) => &[],
        }
    }

    fn transformers_mut(&mut self) -> &mut [Transformer2DModel] {
        match self {
            Self::CrossAttnDownBlock2D(b) => &mut b.attentions,
            Self::DownBlock2D(_) => &mut [],
        }
    }
}

/// An up block (`up_block_types`).
#[derive(Module, Debug)]
pub enum UpBlock {
    CrossAttnUpBlock2D(CrossAttnUpBlock2D),
    UpBlock2D(UpBlock2D),
}

impl UpBlock {
    fn num_resnets(&self) -> usize {
        match self {
            Self::CrossAttnUpBlock2D(b) => b.resnets.len(),
            Self::UpBlock2D(b) => b.resnets.len(),
        }
    }

    fn has_upsampler(&self) -> bool {
        match self {
            Self::CrossAttnUpBlock2D(b) => b.upsamplers.is_some(),
            Self::UpBlock2D(b) => b.upsamplers.is_some(),
        }
    }

    fn transformers(&self) -> &[Transformer2DModel] {
        match self {
            Self::CrossAttnUpBlock2D(b) => &b.attentions,
            Self::UpBlock2D(_) => &[],
        }
    }

    fn transformers_mut(&mut self) -> &mut [Transformer2DModel] {
        match self {
            Self::CrossAttnUpBlock2D(b) => &mut b.attentions,
            Self::UpBlock2D(_) => &mut [],
        }
    }
}

/// The mid block (`mid_block_type`).
#[derive(Module, Debug)]
pub enum MidBlock {
    UNetMidBlock2DCrossAttn(UNetMidBlock2DCrossAttn),
    UNetMidBlock2D(UNetMidBlock2D),
}

impl MidBlock {
    fn transformers(&self) -> &[Transformer2DModel] {
        match self {
            Self::UNetMidBlock2DCrossAttn(b) => &b.attentions,
            Self::UNetMidBlock2D(_) => &[],
        }
    }

    fn transformers_mut(&mut self) -> &mut [Transformer2DModel] {
        match self {
            Self::UNetMidBlock2DCrossAttn(b) => &mut b.attentions,
            Self::UNetMidBlock2D(_) => &mut [],
        }
    }
}

/// `UNet2DConditionModel`: the noise-prediction network of SD 1.x / 2.x.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_proj: Timesteps,
    pub time_embedding: TimestepEmbedding,
    #[module(skip)]
    pub time_embed_act: Option<Activation>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    #[module(skip)]
    pub conv_act: Activation,
    pub conv_out: Conv2d,
    pub center_input_sample: bool,
}

impl UNet2DConditionModel {
    /// Model type name used for key rules and error messages.
    pub const NAME: &'static str = "UNet2DConditionModel";

    /// Every parameter (canonical key, PyTorch shape) the config implies.
    pub fn param_specs(c: &UNet2DConditionConfig) -> Vec<ParamSpec> {
        let mut s = Vec::new();
        let c0 = c.block_out_channels[0];
        Conv2d::specs("conv_in", c.in_channels, c0, c.conv_in_kernel, true, &mut s);
        TimestepEmbedding::specs("time_embedding", c.timestep_input_dim(), c.time_embed_dim(), &mut s);
        for i in 0..c.num_blocks() {
            let (p, a) = (format!("down_blocks.{i}"), c.down_block_args(i));
            match c.down_block_type(i) {
                DownBlockType::CrossAttnDownBlock2D => CrossAttnDownBlock2D::specs(&p, &a, &mut s),
                DownBlockType::DownBlock2D => DownBlock2D::specs(&p, &a, &mut s),
            }
        }
        match c.mid_block() {
            Some(MidBlockType::UNetMidBlock2DCrossAttn) => UNetMidBlock2DCrossAttn::specs("mid_block", &c.mid_block_args(), &mut s),
            Some(MidBlockType::UNetMidBlock2D) => UNetMidBlock2D::specs("mid_block", &Self::plain_mid_config(c), &mut s),
            None => {}
        }
        for i in 0..c.num_blocks() {
            let (p, a) = (format!("up_blocks.{i}"), c.up_block_args(i));
            match c.up_block_type(i) {
                UpBlockType::CrossAttnUpBlock2D => CrossAttnUpBlock2D::specs(&p, &a, &mut s),
                UpBlockType::UpBlock2D => UpBlock2D::specs(&p, &a, &mut s),
            }
        }
        GroupNorm::specs("conv_norm_out", c0, &mut s);
        Conv2d::specs("conv_out", c0, c.out_channels, c.conv_out_kernel, true, &mut s);
        s
    }

    /// `get_mid_block("UNetMidBlock2D", ...)`: one resnet, no attention.
    fn plain_mid_config(c: &UNet2DConditionConfig) -> UNetMidBlock2DConfig {
        let a = c.mid_block_args();
        UNetMidBlock2DConfig {
            in_channels: a.in_channels,
            temb_channels: Some(a.temb_channels),
            num_layers: 0,
            resnet_eps: a.resnet_eps,
            resnet_act_fn: a.resnet_act_fn,
            resnet_groups: a.resnet_groups,
            resnet_time_scale_shift: a.resnet_time_scale_shift,
            add_attention: false,
            attention_head_dim: a.in_channels,
            output_scale_factor: a.output_scale_factor,
        }
    }

    /// Builds the model from loaded weights (see [`crate::weights::load_params`]).
    pub fn from_map(c: &UNet2DConditionConfig, map: &mut TensorMap) -> Self {
        let down_blocks = (0..c.num_blocks())
            .map(|i| {
                let (p, a) = (format!("down_blocks.{i}"), c.down_block_args(i));
                match c.down_block_type(i) {
                    DownBlockType::CrossAttnDownBlock2D => DownBlock::CrossAttnDownBlock2D(CrossAttnDownBlock2D::from_map(&p, &a, map)),
                    DownBlockType::DownBlock2D => DownBlock::DownBlock2D(DownBlock2D::from_map(&p, &a, map)),
                }
            })
            .collect();
        let mid_block = c.mid_block().map(|t| match t {
            MidBlockType::UNetMidBlock2DCrossAttn => {
                MidBlock::UNetMidBlock2DCrossAttn(UNetMidBlock2DCrossAttn::from_map("mid_block", &c.mid_block_args(), map))
            }
            MidBlockType::UNetMidBlock2D => MidBlock::UNetMidBlock2D(UNetMidBlock2D::from_map("mid_block", &Self::plain_mid_config(c), map)),
        });
        let up_blocks = (0..c.num_blocks())
            .map(|i| {
                let (p, a) = (format!("up_blocks.{i}"), c.up_block_args(i));
                match c.up_block_type(i) {
                    UpBlockType::CrossAttnUpBlock2D => UpBlock::CrossAttnUpBlock2D(CrossAttnUpBlock2D::from_map(&p, &a, map)),
                    UpBlockType::UpBlock2D => UpBlock::UpBlock2D(UpBlock2D::from_map(&p, &a, map)),
                }
            })
            .collect();
        Self {
            conv_in: Conv2d::from_map("conv_in", 1, (c.conv_in_kernel - 1) / 2, true, map),
            time_proj: Timesteps { num_channels: c.timestep_input_dim(), flip_sin_to_cos: c.flip_sin_to_cos, downscale_freq_shift: c.freq_shift },
            time_embedding: TimestepEmbedding::from_map("time_embedding", c.act(), c.timestep_post_act(), map),
            time_embed_act: c.time_embed_act(),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::from_map("conv_norm_out", c.norm_groups(), c.norm_eps, map),
            conv_act: c.act(),
            conv_out: Conv2d::from_map("conv_out", 1, (c.conv_out_kernel - 1) / 2, true, map),
            center_input_sample: c.center_input_sample,
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.conv_in.weight.val().device()
    }

    /// Latent channels the UNet takes (`in_channels`).
    pub fn in_channels(&self) -> usize {
        self.conv_in.weight.val().dims()[1]
    }

    fn num_upsamplers(&self) -> usize {
        self.up_blocks.iter().filter(|b| b.has_upsampler()).count()
    }

    /// Every `Transformer2DModel` with its path, in forward order (down, mid, up).
    fn transformers(&self) -> Vec<(String, &Transformer2DModel)> {
        let mut out = Vec::new();
        for (i, b) in self.down_blocks.iter().enumerate() {
            out.extend(b.transformers().iter().enumerate().map(|(j, t)| (format!("down_blocks.{i}.attentions.{j}"), t)));
        }
        if let Some(m) = &self.mid_block {
            out.extend(m.transformers().iter().enumerate().map(|(j, t)| (format!("mid_block.attentions.{j}"), t)));
        }
        for (i, b) in self.up_blocks.iter().enumerate() {
            out.extend(b.transformers().iter().enumerate().map(|(j, t)| (format!("up_blocks.{i}.attentions.{j}"), t)));
        }
        out
    }

    fn attentions_mut(&mut self) -> Vec<&mut Attention> {
        let mut out = Vec::new();
        for b in &mut self.down_blocks {
            out.extend(b.transformers_mut().iter_mut().flat_map(|t| t.attentions_mut()));
        }
        if let Some(m) = &mut self.mid_block {
            out.extend(m.transformers_mut().iter_mut().flat_map(|t| t.attentions_mut()));
        }
        for b in &mut self.up_blocks {
            out.extend(b.transformers_mut().iter_mut().flat_map(|t| t.attentions_mut()));
        }
        out
    }

    /// Paths of every attention module in forward order
    /// (`down_blocks.0.attentions.0.transformer_blocks.0.attn1`, `...attn2`, ...): the keys
    /// [`UNetCapture::attention`] accepts.
    pub fn attention_paths(&self) -> Vec<String> {
        self.transformers().into_iter().flat_map(|(_, t)| t.attentions().map(|a| a.path.clone()).collect::<Vec<_>>()).collect()
    }

    /// The stages `forward` runs and can stop after: `conv_in`, `down_blocks.{i}`, `mid_block`
    /// (when present), `up_blocks.{i}`.
    pub fn stage_names(&self) -> Vec<String> {
        let mut s = vec!["conv_in".to_string()];
        s.extend((0..self.down_blocks.len()).map(|i| format!("down_blocks.{i}")));
        if self.mid_block.is_some() {
            s.push("mid_block".into());
        }
        s.extend((0..self.up_blocks.len()).map(|i| format!("up_blocks.{i}")));
        s
    }

    /// Sets how many queries every attention module processes at once (`None`: all). Results
    /// do not depend on it; peak memory does (see [`crate::models::attention`]).
    pub fn set_query_chunk_size(&mut self, query_chunk_size: Option<usize>) {
        for a in self.attentions_mut() {
            a.query_chunk_size = query_chunk_size;
        }
    }

    /// Predicts the noise (or v) of `sample` at `timesteps`.
    ///
    /// `timesteps`: one value for the whole batch or one per sample; integer or fractional
    /// (Euler-style schedules) values are both used as given.
    ///
    /// # Shapes
    /// - `sample`: `[batch, in_channels, h, w]`
    /// - `encoder_hidden_states`: `[batch, keys, cross_attention_dim]`
    /// - output: `[batch, out_channels, h, w]`, or the output of the stage named by
    ///   `capture.stop_after`.
    ///
    /// # Panics
    /// When `capture.stop_after` names no stage of this model (see [`Self::stage_names`]), or
    /// the number of timesteps is neither 1 nor `batch`.
    pub fn forward(&self, sample: Tensor<4>, timesteps: &[f64], encoder_hidden_states: Tensor<3>, capture: &mut UNetCapture) -> Tensor<4> {
        if let Some(stop) = &capture.stop_after {
            let stages = self.stage_names();
            assert!(stages.iter().any(|s| stage_contains(s, stop)), "stop_after `{stop}` is not in this UNet (stages: {})", stages.join(", "));
        }
        let [batch, _, height, width] = sample.dims();
        let ehs = encoder_hidden_states;
        // sizes that are not a multiple of the overall upsampling factor make each upsampler
        // take the size of the matching skip connection
        let up_factor = 1usize << self.num_upsamplers();
        let forward_upsample_size = height % up_factor != 0 || width % up_factor != 0;

        // 0. center input if necessary
        let sample = if self.center_input_sample { sample * 2.0 - 1.0 } else { sample };

        // 1. time
        let t_emb = self.time_proj.forward(timesteps, batch, &self.device());
        capture.record_embedding("time_proj", &t_emb);
        let emb = self.time_embedding.forward(t_emb);
        capture.record_embedding("time_embedding", &emb);
        let emb = match self.time_embed_act {
            Some(act) => act.forward(emb),
            None => emb,
        };

        // 2. pre-process
        let mut sample = self.conv_in.forward(sample);
        if capture.record("conv_in", &sample) {
            return sample;
        }

        // 3. down
        let mut res_samples = vec![sample.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, res) = match block {
                DownBlock::CrossAttnDownBlock2D(b) => b.forward(sample, &emb, &ehs, &mut capture.attn),
                DownBlock::DownBlock2D(b) => b.forward(sample, &emb),
            };
            sample = out;
            res_samples.extend(res);
            if capture.record(&format!("down_blocks.{i}"), &sample) {
                return sample;
            }
        }

        // 4. mid
        if let Some(mid) = &self.mid_block {
            sample = match mid {
                MidBlock::UNetMidBlock2DCrossAttn(b) => b.forward(sample, &emb, &ehs, &mut capture.attn),
                MidBlock::UNetMidBlock2D(b) => b.forward(sample, Some(&emb), &mut capture.attn),
            };
            if capture.record("mid_block", &sample) {
                return sample;
            }
        }

        // 5. up
        let last = self.up_blocks.len().saturating_sub(1);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let res = res_samples.split_off(res_samples.len() - block.num_resnets());
            let upsample_size = (i != last && forward_upsample_size)
                .then(|| res_samples.last().map(|t| [t.dims()[2], t.dims()[3]]))
                .flatten();
            sample = match block {
                UpBlock::CrossAttnUpBlock2D(b) => b.forward(sample, &emb, res, &ehs, upsample_size, &mut capture.attn),
                UpBlock::UpBlock2D(b) => b.forward(sample, &emb, res, upsample_size),
            };
            if capture.record(&format!("up_blocks.{i}"), &sample) {
                return sample;
            }
        }

        // 6. post-process
        let sample = self.conv_act.forward(self.conv_norm_out.forward(sample));
        self.conv_out.forward(sample)
    }
}
