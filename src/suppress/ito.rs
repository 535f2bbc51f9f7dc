//! SuppressEOT's inference-time text-embedding optimisation (ITO, the reference's attention
//! loss + `text_embeddings - scale * grad` update). Loss, with `cos` the cosine similarity
//! (eps 1e-8) of flattened maps:
//!
//! `L = 1 * sum_{i retain} (1 - cos(A_c[i], B_c[i])) - 0.5 * sum_{i in I} (1 - cos(A_c[i], B_c[i]))
//!    + 1 * sum_{i retain} sum_{j in M_i} (1 - cos(A_s[:, j], B_s[:, j]))
//!    - 0.5 * sum_{i in I} sum_{j in M_i} (1 - cos(A_s[:, j], B_s[:, j]))`
//!
//! where `A` are the original branch's maps (pass A, constants), `B` the suppressed branch's
//! maps for the embedding `e` being optimised (pass B, in the autodiff graph of `e`), "retain"
//! the prompt tokens `1..n-1` outside `I`, and `M_i` the masks of [`super::masks`]. The loss
//! and its gradient stay on the device; only pass A's cross maps are read back (for the masks).

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};

use crate::attention_maps::{AttentionMaps, MapLayers, aggregate_maps, capture_maps};
use super::masks::token_masks;
use super::{SuppressError, SuppressTokens, read_f32};
use crate::models::UNet2DConditionModel;
use crate::models::attention::AttnCapture;

/// Weight of the preservation terms (cross and self).
pub const RETAIN_WEIGHT: f64 = 1.0;
/// Weight of the suppression terms (cross and self).
pub const ERASE_WEIGHT: f64 = -0.5;
/// `eps` of `torch.cosine_similarity`.
pub const COSINE_EPS: f64 = 1e-8;

/// `scale * sqrt(numpy.linspace(1, 0.1, num_steps)[step])`: the ITO step size at denoising step
/// `step` (the reference uses `scale` 20 for generated images, 5 for real ones).
pub fn ito_step_scale(scale: f64, step: usize, num_steps: usize) -> f64 {
    let lin = if num_steps <= 1 || step + 1 == num_steps {
        if num_steps <= 1 { 1.0 } else { 0.1 }
    } else {
        step as f64 * ((0.1 - 1.0) / (num_steps - 1) as f64) + 1.0
    };
    scale * lin.sqrt()
}

/// Per-token and per-pixel weights of the four loss sums, one row per batch element.
#[derive(Clone, Debug)]
pub struct LossWeights {
    /// `[batch, keys]`: 1 at retained prompt tokens.
    pub cross_retain: Tensor<2>,
    /// `[batch, keys]`: 1 at negative-target tokens.
    pub cross_erase: Tensor<2>,
    /// `[batch, h*w]`: how many retained tokens' masks contain pixel `j`.
    pub self_retain: Tensor<2>,
    /// `[batch, h*w]`: how many negative-target masks contain pixel `j`.
    pub self_erase: Tensor<2>,
}

impl LossWeights {
    /// From float masks (`[n-2, h*w]` per batch element, see [`token_masks`]).
    pub fn new(masks: &[Vec<f64>], tokens: &SuppressTokens, keys: usize, hw: usize, device: &Device) -> Self {
        let b = masks.len();
        let (mut cr, mut ce) = (vec![0f32; b * keys], vec![0f32; b * keys]);
        let (mut sr, mut se) = (vec![0f32; b * hw], vec![0f32; b * hw]);
        for (bi, m) in masks.iter().enumerate() {
            for (k, i) in tokens.word_positions().enumerate() {
                let erase = tokens.target.contains(&i);
                let (c, s) = if erase { (&mut ce, &mut se) } else { (&mut cr, &mut sr) };
                c[bi * keys + i] = 1.0;
                for j in 0..hw {
                    if m[k * hw + j] > 0.0 {
                        s[bi * hw + j] += 1.0;
                    }
                }
            }
        }
        let t = |v: Vec<f32>, n: usize| Tensor::<2>::from_data(TensorData::new(v, [b, n]), device);
        Self { cross_retain: t(cr, keys), cross_erase: t(ce, keys), self_retain: t(sr, hw), self_erase: t(se, hw) }
    }
}

/// `1 - cos` of matching columns: `[batch, h, w, k]` x2 -> `[batch, k]`, computed as
/// `|a/|a| - b/|b||^2 / 2` (the same value for non-zero columns, without the cancellation of
/// `1 - cos` in f32 when the maps are close; the reference computes in f64).
fn one_minus_cos(a: Tensor<4>, b: Tensor<4>) -> Tensor<2> {
    let [n, h, w, k] = a.dims();
    let unit = |x: Tensor<4>| {
        let x = x.reshape([n, h * w, k]);
        let norm = (x.clone() * x.clone()).sum_dim(1).sqrt().clamp_min(COSINE_EPS);
        x / norm
    };
    let d = unit(a) - unit(b);
    ((d.clone() * d).sum_dim(1) * 0.5).reshape([n, k])
}

/// The ITO loss of one pass B.
#[derive(Clone, Debug)]
pub struct ItoLoss {
    /// `[1]`: the weighted total `L`.
    pub total: Tensor<1>,
    /// `[4]`: unweighted sums retain, erase, self_retain, self_erase.
    pub parts: Tensor<1>,
}

/// What ITO compares against at one denoising step: the original branch's maps (pass A), the
/// masks and the loss weights.
pub struct ItoTarget {
    /// The layers both passes aggregate.
    pub layers: MapLayers,
    /// Where the negative target is in the prompt.
    pub tokens: SuppressTokens,
    /// Pass A maps (constants).
    pub original: AttentionMaps,
    /// Float masks `[n-2, h*w]` per batch element (before the `> 0` test).
    pub masks: Vec<Vec<f64>>,
    pub weights: LossWeights,
    /// [`Self::optimize`] uses the activation-checkpointed gradient ([`Self::loss_and_grad`],
    /// default) or plain autodiff ([`Self::loss_and_grad_autodiff`]). Measured on SD 1.5 at
    /// 512x512 (CPU): pass B's extra memory about 0.75 GiB instead of 3.4 GiB, about 2x the time.
    pub checkpoint: bool,
}

impl ItoTarget {
    /// Pass A: the UNet on the original branch's (scheduler-scaled) latents with the prompt
    /// embedding `c`, maps aggregated, then the masks (one readback of the cross maps).
    ///
    /// # Shapes
    /// - `sample`: `[batch, C, h, w]`, `c`: `[batch, 77, D]`
    pub async fn new(
        unet: &UNet2DConditionModel,
        layers: &MapLayers,
        tokens: &SuppressTokens,
        sample: Tensor<4>,
        timestep: f64,
        c: Tensor<3>,
    ) -> Result<Self, SuppressError> {
        let original = capture_maps(unet, layers, sample, timestep, c.inner());
        let original = AttentionMaps { cross: original.cross.detach(), self_attn: original.self_attn.detach() };
        let [b, h, w, keys] = original.cross.dims();
        let host = read_f32(original.cross.clone()).await?;
        let masks: Vec<Vec<f64>> = host.chunks_exact(h * w * keys).map(|m| token_masks(m, [h, w], keys, tokens)).collect();
        debug_assert_eq!(masks.len(), b);
        let weights = LossWeights::new(&masks, tokens, keys, h * w, &original.cross.device());
        Ok(Self { layers: layers.clone(), tokens: tokens.clone(), original, masks, weights, checkpoint: true })
    }

    /// The loss of pass-B maps `b` (in their autodiff graph), summed over the batch.
    pub fn loss(&self, b: &AttentionMaps) -> ItoLoss {
        let w = &self.weights;
        let cross = one_minus_cos(self.original.cross.clone(), b.cross.clone());
        let selfm = one_minus_cos(self.original.self_attn.clone(), b.self_attn.clone());
        let sum = |d: Tensor<2>, wt: &Tensor<2>| (d * wt.clone()).sum();
        let retain = sum(cross.clone(), &w.cross_retain);
        let erase = sum(cross, &w.cross_erase);
        let self_retain = sum(selfm.clone(), &w.self_retain);
        let self_erase = sum(selfm, &w.self_erase);
        let total = (retain.clone() + self_retain.clone()) * RETAIN_WEIGHT + (erase.clone() + self_erase.clone()) * ERASE_WEIGHT;
        ItoLoss { total, parts: Tensor::cat(vec![retain, erase, self_retain, self_erase], 0) }
    }

    /// Pass B for embedding `e` and the loss with its gradient `dL/de` (all on the device;
    /// returned tensors carry no autodiff graph). The UNet pass is activation-checkpointed
    /// ([`crate::models::UNetTape::backward_ehs_with_probs`]): it runs without a graph up to the
    /// last map layer, the loss is differentiated with respect to the captured probabilities,
    /// and the backward pass re-runs one module at a time, so the memory is about one forward
    /// pass instead of every activation up to the last map layer. Same numbers as
    /// [`Self::loss_and_grad_autodiff`] up to summation order.
    ///
    /// # Shapes
    /// - `sample`: `[batch, C, h, w]` (suppressed branch, scheduler-scaled), `e`: `[batch, 77, D]`
    /// - gradient: `[batch, 77, D]`
    pub fn loss_and_grad(&self, unet: &UNet2DConditionModel, sample: Tensor<4>, timestep: f64, e: Tensor<3>) -> (ItoLoss, Tensor<3>) {
        let mut capture = AttnCapture::of(self.layers.all_paths());
        let (x, tape) = unet.forward_checkpointed_capture(sample, &[timestep], e.inner(), &mut capture);
        let leaves: HashMap<String, Tensor<4>> = capture.probs.into_iter().map(|(k, v)| (k, v.autodiff().require_grad())).collect();
        let size = self.layers.size;
        let cross = aggregate_maps(&leaves, &self.layers.cross, size).expect("cross-attention maps at the chosen resolution were captured");
        let self_attn = aggregate_maps(&leaves, &self.layers.self_attn, size).expect("self-attention maps at the chosen resolution were captured");
        let loss = self.loss(&AttentionMaps { cross, self_attn });
        let grads = loss.total.backward();
        let g_probs: HashMap<String, Tensor<4>> = leaves.iter().filter_map(|(k, v)| v.grad(&grads).map(|g| (k.clone(), g))).collect();
        let grad = tape.backward_ehs_with_probs(x.zeros_like(), &g_probs);
        (ItoLoss { total: loss.total.inner(), parts: loss.parts.inner() }, grad)
    }

    /// [`Self::loss_and_grad`] by plain autodiff through the UNet up to the last map layer
    /// (keeps every activation of that part of the pass; for comparison).
    pub fn loss_and_grad_autodiff(&self, unet: &UNet2DConditionModel, sample: Tensor<4>, timestep: f64, e: Tensor<3>) -> (ItoLoss, Tensor<3>) {
        let plain = e.inner();
        let e = plain.clone().autodiff().require_grad();
        let maps = capture_maps(unet, &self.layers, sample, timestep, e.clone());
        let loss = self.loss(&maps);
        let grads = loss.total.backward();
        let grad = e.grad(&grads).unwrap_or_else(|| plain.zeros_like());
        (ItoLoss { total: loss.total.inner(), parts: loss.parts.inner() }, grad)
    }

    /// `iterations` updates `e <- e - step_scale * dL/de`; returns the final embedding and the
    /// loss before each update (`[1]` device tensors, nothing read back).
    pub fn optimize(
        &self,
        unet: &UNet2DConditionModel,
        sample: Tensor<4>,
        timestep: f64,
        e: Tensor<3>,
        step_scale: f64,
        iterations: usize,
    ) -> (Tensor<3>, Vec<Tensor<1>>) {
        let mut e = e.inner();
        let mut losses = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let (loss, grad) = if self.checkpoint {
                self.loss_and_grad(unet, sample.clone(), timestep, e.clone())
            } else {
                self.loss_and_grad_autodiff(unet, sample.clone(), timestep, e.clone())
            };
            e = e - grad * step_scale;
            losses.push(loss.total);
        }
        (e, losses)
    }
}
