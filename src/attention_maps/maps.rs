//! Aggregated attention maps as SuppressEOT (and prompt-to-prompt's `AttentionStore`) build
//! them: per layer `[heads, HW, K]` probabilities, the first `heads / 2` heads kept (the
//! reference reshapes to `(2, heads/2, res, res, K)` and keeps index 0), layers at one
//! resolution only, mean over (layer, kept head). Everything stays on the device.
//!
//! Resolution rule ([`MapLayers::for_unet`]): the coarsest level of the down/up blocks that
//! hold transformer layers (the mid block is not considered for choosing). SD 1.x / 2.x at
//! 64x64 latents: level 2, 16x16 (`down_blocks.2`, `up_blocks.1`), as the reference's `res=16`;
//! the tiny test UNet at 32x32: level 0, 32x32 (`down_blocks.0`, `up_blocks.1`). A mid block at
//! that same resolution would be included, as the reference's `HW == res*res` filter does.
//! Layer order: up, down, mid (the reference's pass-A cross maps use up then down; the mid
//! block is at another resolution in every SD config, so both orders are the same).

use std::collections::HashMap;

use burn::tensor::Tensor;

use crate::models::unet::{DownBlock, UpBlock};
use crate::models::{UNet2DConditionModel, UNetCapture};

/// The attention layers whose maps SuppressEOT aggregates, for one latent size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLayers {
    /// Map size `[h, w]` (latent pixels at the chosen level).
    pub size: [usize; 2],
    /// Cross-attention (`attn2`) paths, in aggregation order (up, down, mid).
    pub cross: Vec<String>,
    /// Self-attention (`attn1`) paths, same order.
    pub self_attn: Vec<String>,
    /// The last of these paths in forward order: a pass that only needs the maps can stop
    /// after its stage ([`UNetCapture::with_stop_after`]).
    pub last: String,
}

/// Level (number of 2x downsamplings before it) of every down block, of the mid block and of
/// every up block, from the blocks' down/upsamplers.
fn block_levels(unet: &UNet2DConditionModel) -> (Vec<usize>, usize, Vec<usize>) {
    let mut down = Vec::new();
    let mut level = 0;
    for b in &unet.down_blocks {
        down.push(level);
        let has = match b {
            DownBlock::CrossAttnDownBlock2D(b) => b.downsamplers.is_some(),
            DownBlock::DownBlock2D(b) => b.downsamplers.is_some(),
        };
        level += usize::from(has);
    }
    let mid = level;
    let mut up = Vec::new();
    for b in &unet.up_blocks {
        up.push(level);
        let has = match b {
            UpBlock::CrossAttnUpBlock2D(b) => b.upsamplers.is_some(),
            UpBlock::UpBlock2D(b) => b.upsamplers.is_some(),
        };
        level = level.saturating_sub(usize::from(has));
    }
    (down, mid, up)
}

/// Level and place (`down`, `mid`, `up`) of an attention path; `None` for other paths.
fn level(path: &str, levels: &(Vec<usize>, usize, Vec<usize>)) -> Option<(usize, &'static str)> {
    let mut parts = path.split('.');
    let place = parts.next()?;
    match place {
        "down_blocks" => Some((*levels.0.get(parts.next()?.parse::<usize>().ok()?)?, "down")),
        "up_blocks" => Some((*levels.2.get(parts.next()?.parse::<usize>().ok()?)?, "up")),
        "mid_block" => Some((levels.1, "mid")),
        _ => None,
    }
}

impl MapLayers {
    /// The layers for a latent of `[h, w]` (see the module docs for the rule). `None` when the
    /// UNet has no transformer layers in its down/up blocks.
    pub fn for_unet(unet: &UNet2DConditionModel, latent_size: [usize; 2]) -> Option<Self> {
        let levels = block_levels(unet);
        let paths = unet.attention_paths();
        let lvl = paths.iter().filter_map(|p| level(p, &levels)).filter(|(_, place)| *place != "mid").map(|(l, _)| l).max()?;
        // stride-2, padding-1 convolutions: ceil(x / 2) per level
        let shrink = |x: usize| (0..lvl).fold(x, |x, _| x.div_ceil(2));
        let size = [shrink(latent_size[0]), shrink(latent_size[1])];
        let chosen: Vec<(&String, &'static str)> =
            paths.iter().filter_map(|p| level(p, &levels).filter(|(l, _)| *l == lvl).map(|(_, place)| (p, place))).collect();
        let last = chosen.last()?.0.clone();
        let ordered = |suffix: &str| -> Vec<String> {
            ["up", "down", "mid"]
                .iter()
                .flat_map(|want| chosen.iter().filter(move |(p, place)| place == want && p.ends_with(suffix)).map(|(p, _)| (*p).clone()))
                .collect()
        };
        Some(Self { size, cross: ordered(".attn2"), self_attn: ordered(".attn1"), last })
    }

    /// Every path to capture (cross and self).
    pub fn all_paths(&self) -> Vec<String> {
        self.cross.iter().chain(&self.self_attn).cloned().collect()
    }
}

/// Which heads of each layer an aggregate averages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heads {
    /// The first `heads / 2` (at least 1): what SuppressEOT's reference keeps with batch 1.
    FirstHalf,
    /// Every head: prompt-to-prompt's `aggregate_attention` on the conditional half of the batch,
    /// used for the user's heatmaps.
    All,
}

/// Mean over (layer, first `heads / 2` heads) of captured probabilities, layers whose query
/// count is not `h * w` skipped.
///
/// # Shapes
/// - `probs[path]`: `[batch, heads, queries, keys]`
/// - output: `[batch, h, w, keys]`; `None` when no listed layer has `h * w` queries.
pub fn aggregate_maps(probs: &HashMap<String, Tensor<4>>, paths: &[String], size: [usize; 2]) -> Option<Tensor<4>> {
    aggregate_maps_heads(probs, paths, size, Heads::FirstHalf)
}

/// [`aggregate_maps`] with a choice of heads.
///
/// # Shapes
/// - `probs[path]`: `[batch, heads, queries, keys]`
/// - output: `[batch, h, w, keys]`; `None` when no listed layer has `h * w` queries.
pub fn aggregate_maps_heads(probs: &HashMap<String, Tensor<4>>, paths: &[String], size: [usize; 2], heads: Heads) -> Option<Tensor<4>> {
    let [h, w] = size;
    let kept: Vec<Tensor<4>> = paths
        .iter()
        .filter_map(|p| probs.get(p))
        .filter(|t| t.dims()[2] == h * w)
        .map(|t| match heads {
            Heads::FirstHalf => {
                let n = t.dims()[1];
                t.clone().narrow(1, 0, (n / 2).max(1))
            }
            Heads::All => t.clone(),
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    let all = if kept.len() == 1 { kept.into_iter().next()? } else { Tensor::cat(kept, 1) };
    let [b, _, _, k] = all.dims();
    Some(all.mean_dim(1).reshape([b, h, w, k]))
}

/// Cross (`[batch, h, w, 77]`) and self (`[batch, h, w, h*w]`) maps of one pass.
#[derive(Clone, Debug)]
pub struct AttentionMaps {
    /// `[batch, h, w, 77]`: per-token cross-attention maps.
    pub cross: Tensor<4>,
    /// `[batch, h, w, h*w]`: column `j` is the attention of every query pixel to key pixel `j`.
    pub self_attn: Tensor<4>,
}

/// Runs the UNet up to the last layer of `layers` and aggregates its maps (the autodiff graph
/// of `encoder_hidden_states` is kept).
///
/// # Shapes
/// - `sample`: `[batch, C, h, w]` (already scaled for the scheduler), `encoder_hidden_states`:
///   `[batch, 77, D]`
pub fn capture_maps(unet: &UNet2DConditionModel, layers: &MapLayers, sample: Tensor<4>, timestep: f64, encoder_hidden_states: Tensor<3>) -> AttentionMaps {
    let mut capture = UNetCapture::attention(layers.all_paths()).with_stop_after(layers.last.clone());
    let _ = unet.forward(sample, &[timestep], encoder_hidden_states, &mut capture);
    let probs = &capture.attn.probs;
    let cross = aggregate_maps(probs, &layers.cross, layers.size).expect("cross-attention maps at the chosen resolution were captured");
    let self_attn = aggregate_maps(probs, &layers.self_attn, layers.size).expect("self-attention maps at the chosen resolution were captured");
    AttentionMaps { cross, self_attn }
}
