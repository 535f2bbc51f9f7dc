//! Per-token cross-attention heatmaps for the user, as prompt-to-prompt's `AttentionStore` +
//! `aggregate_attention` / `show_cross_attention` build them: every denoising step's
//! cross-attention probabilities of the conditional half of the batch, aggregated over the
//! layers of [`MapLayers`] (the SuppressEOT resolution rule: all cross-attention layers at that
//! resolution) and over **all heads** ([`Heads::All`]; SuppressEOT's "first half of the heads" is
//! an artefact of its batch-1 reshape, not a choice worth showing), summed on the device step by
//! step and averaged at the end. One asynchronous readback at [`HeatmapAccumulator::finish`]
//! returns the maps of the prompt's words (positions `1..n-1`: BOS and EOS excluded).
//!
//! Nothing here changes the generation: capturing only keeps tensors the attention computes
//! anyway ([`crate::models::UNetCapture::attention`]).

use burn::tensor::Tensor;

use super::maps::{Heads, MapLayers, aggregate_maps_heads};
use crate::readback::read_f32;
use crate::error::DeviceError;
use crate::models::UNetCapture;
use crate::tokenizer::Tokenized;

/// Sum over steps of aggregated cross-attention maps, kept on the device.
#[derive(Clone, Debug)]
pub struct HeatmapAccumulator {
    layers: MapLayers,
    heads: Heads,
    /// `[batch, h, w, 77]`.
    sum: Option<Tensor<4>>,
    steps: usize,
}

impl HeatmapAccumulator {
    /// Accumulates the cross-attention layers of `layers` over all heads.
    pub fn new(layers: MapLayers) -> Self {
        Self::with_heads(layers, Heads::All)
    }

    /// Accumulates with a choice of heads ([`Heads::FirstHalf`] reproduces SuppressEOT's maps).
    pub fn with_heads(layers: MapLayers, heads: Heads) -> Self {
        Self { layers, heads, sum: None, steps: 0 }
    }

    /// The layers and map size.
    pub fn layers(&self) -> &MapLayers {
        &self.layers
    }

    /// Steps added so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// A capture for one UNet call that records what [`Self::add`] needs.
    pub fn capture(&self) -> UNetCapture {
        UNetCapture::attention(self.layers.cross.clone())
    }

    /// Adds one step: the maps of batch rows `rows` of a UNet call made with [`Self::capture`]
    /// (with classifier-free guidance: the conditional rows). Returns false (and adds nothing)
    /// when the capture holds no layer at the map size.
    pub fn add(&mut self, capture: &UNetCapture, rows: std::ops::Range<usize>) -> bool {
        let Some(maps) = aggregate_maps_heads(&capture.attn.probs, &self.layers.cross, self.layers.size, self.heads) else {
            return false;
        };
        self.add_maps(maps.narrow(0, rows.start, rows.len()));
        true
    }

    /// Adds one step's aggregated maps `[batch, h, w, keys]` (the batch must stay the same).
    pub fn add_maps(&mut self, maps: Tensor<4>) {
        self.sum = Some(match self.sum.take() {
            Some(s) => s + maps,
            None => maps,
        });
        self.steps += 1;
    }

    /// The mean over the added steps, `[batch, h, w, keys]` on the device; `None` before any step.
    pub fn mean(&self) -> Option<Tensor<4>> {
        self.sum.clone().map(|s| s / self.steps as f64)
    }

    /// Reads the mean back (one asynchronous readback) and keeps the word positions of
    /// `prompt` (`1..n-1`, BOS and EOS excluded). `None` before any step.
    pub async fn finish(&self, prompt: &Tokenized, eos_id: u32) -> Result<Option<TokenHeatmaps>, DeviceError> {
        let Some(mean) = self.mean() else { return Ok(None) };
        let [batch, h, w, keys] = mean.dims();
        let n = prompt.input_ids.iter().position(|&id| id == eos_id).map_or(keys, |p| p + 1).min(keys);
        let positions: Vec<usize> = (1..n.saturating_sub(1)).collect();
        // [batch, h, w, keys] -> [batch, keys, h, w], then the word rows
        let t = mean.permute([0, 3, 1, 2]);
        let host = if positions.is_empty() { vec![] } else { read_f32(t.narrow(1, 1, positions.len())).await? };
        let tokens = positions.iter().map(|&p| prompt.tokens.get(p).cloned().unwrap_or_default()).collect();
        Ok(Some(TokenHeatmaps { batch, size: [h, w], positions, tokens, steps: self.steps, maps: host }))
    }
}

/// Per-token heatmaps read back to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenHeatmaps {
    /// Images in the batch.
    pub batch: usize,
    /// Map size `[h, w]` (latent pixels at the chosen level).
    pub size: [usize; 2],
    /// Token positions in the 77-token prompt (`1..n-1`).
    pub positions: Vec<usize>,
    /// Token strings (`</w>` marks a word end), one per position.
    pub tokens: Vec<String>,
    /// Steps averaged.
    pub steps: usize,
    /// `[batch, tokens, h, w]` row-major: mean attention probability of each pixel to the token.
    pub maps: Vec<f32>,
}

impl TokenHeatmaps {
    /// The `[h, w]` map of token `k` (index into [`Self::tokens`]) of image `image`.
    pub fn map(&self, image: usize, k: usize) -> &[f32] {
        let hw = self.size[0] * self.size[1];
        let start = (image * self.tokens.len() + k) * hw;
        &self.maps[start..start + hw]
    }

    /// A file-name-safe label of token `k`: `</w>` dropped, anything but ASCII letters, digits,
    /// `-` and `_` replaced by `_`, at most 40 characters.
    pub fn label(&self, k: usize) -> String {
        let t = self.tokens[k].trim_end_matches("</w>");
        let s: String = t.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(40).collect();
        if s.is_empty() { "_".into() } else { s }
    }
}
