//! Activation checkpointing for gradients that flow into `encoder_hidden_states` (textual
//! inversion, SuppressEOT): the UNet forward runs WITHOUT an autodiff graph, keeping only the
//! input of every module (resnet, transformer, sampler, ...); the backward pass then walks the
//! modules in reverse, re-running one module at a time on the autodiff device and
//! back-propagating the incoming gradient through it (vector-Jacobian product via the surrogate
//! `sum(out * g_out)`), so at most one module's activations exist at once instead of the whole
//! network's. Modules before the first transformer are never re-run: nothing there depends on
//! the text embedding.
//!
//! Same numbers as plain autodiff through [`UNet2DConditionModel::forward`] (same ops, other
//! summation order for the accumulated `ehs` gradient).

use std::collections::HashMap;

use burn::tensor::Tensor;

use super::{DownBlock, MidBlock, UNet2DConditionModel, UpBlock};
use crate::models::attention::{Attention, AttnCapture, Transformer2DModel};
use crate::models::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};

/// One module (or bookkeeping step) of the UNet, in forward order.
enum Op<'a> {
    ConvIn,
    Resnet(&'a ResnetBlock2D),
    Transformer(&'a Transformer2DModel),
    /// Spatial self-attention of a `UNetMidBlock2D`.
    Attn(&'a Attention),
    Down(&'a Downsample2D),
    /// Upsampler of up block `i` (the size is decided during the forward pass).
    Up(&'a Upsample2D, usize),
    /// Remember the current hidden state as a skip connection.
    PushSkip,
    /// Concatenate the last skip connection along channels.
    CatSkip,
    /// `conv_norm_out`, `conv_act`, `conv_out`.
    Out,
}

/// What [`UNet2DConditionModel::forward_checkpointed`] keeps for the backward pass.
pub struct UNetTape<'a> {
    unet: &'a UNet2DConditionModel,
    ops: Vec<Op<'a>>,
    /// Input of op `k` (only where the backward pass re-runs it).
    inputs: Vec<Option<Tensor<4>>>,
    /// For each `CatSkip` op: index of the skip it consumed, and the channels of `x` before it.
    cat: Vec<(usize, usize)>,
    /// For each `Up` op: the output size it was given.
    up_sizes: Vec<Option<[usize; 2]>>,
    temb: Tensor<2>,
    ehs: Tensor<3>,
}

impl UNet2DConditionModel {
    fn ops(&self) -> Vec<Op<'_>> {
        let mut ops = vec![Op::ConvIn, Op::PushSkip];
        for block in &self.down_blocks {
            let (resnets, transformers, down) = match block {
                DownBlock::CrossAttnDownBlock2D(b) => (&b.resnets, &b.attentions[..], &b.downsamplers),
                DownBlock::DownBlock2D(b) => (&b.resnets, &[][..], &b.downsamplers),
            };
            for (j, r) in resnets.iter().enumerate() {
                ops.push(Op::Resnet(r));
                if let Some(t) = transformers.get(j) {
                    ops.push(Op::Transformer(t));
                }
                ops.push(Op::PushSkip);
            }
            if let Some(d) = down {
                ops.push(Op::Down(d));
                ops.push(Op::PushSkip);
            }
        }
        match &self.mid_block {
            Some(MidBlock::UNetMidBlock2DCrossAttn(b)) => {
                ops.push(Op::Resnet(&b.resnets[0]));
                for (t, r) in b.attentions.iter().zip(&b.resnets[1..]) {
                    ops.push(Op::Transformer(t));
                    ops.push(Op::Resnet(r));
                }
            }
            Some(MidBlock::UNetMidBlock2D(b)) => {
                ops.push(Op::Resnet(&b.resnets[0]));
                for (j, r) in b.resnets[1..].iter().enumerate() {
                    if let Some(a) = b.attentions.get(j) {
                        ops.push(Op::Attn(a));
                    }
                    ops.push(Op::Resnet(r));
                }
            }
            None => {}
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            let (resnets, transformers, up) = match block {
                UpBlock::CrossAttnUpBlock2D(b) => (&b.resnets, &b.attentions[..], &b.upsamplers),
                UpBlock::UpBlock2D(b) => (&b.resnets, &[][..], &b.upsamplers),
            };
            for (j, r) in resnets.iter().enumerate() {
                ops.push(Op::CatSkip);
                ops.push(Op::Resnet(r));
                if let Some(t) = transformers.get(j) {
                    ops.push(Op::Transformer(t));
                }
            }
            if let Some(u) = up {
                ops.push(Op::Up(u, i));
            }
        }
        ops.push(Op::Out);
        ops
    }

    /// [`Self::forward`] without an autodiff graph (inputs are taken off autodiff), keeping what
    /// [`UNetTape::backward_ehs`] needs. Returns the prediction `[batch, out_channels, h, w]`.
    pub fn forward_checkpointed(&self, sample: Tensor<4>, timesteps: &[f64], encoder_hidden_states: Tensor<3>) -> (Tensor<4>, UNetTape<'_>) {
        self.forward_checkpointed_capture(sample, timesteps, encoder_hidden_states, &mut AttnCapture::default())
    }

    /// [`Self::forward_checkpointed`] that also captures the attention probabilities of
    /// `capture.paths` (plain tensors, no graph) and, when there are any, stops right after the
    /// transformer that completes them (as [`super::UNetCapture::with_stop_after`]; the returned
    /// tensor is then that transformer's output). Differentiate a loss on the probabilities
    /// with [`UNetTape::backward_ehs_with_probs`].
    pub fn forward_checkpointed_capture(
        &self,
        sample: Tensor<4>,
        timesteps: &[f64],
        encoder_hidden_states: Tensor<3>,
        capture: &mut AttnCapture,
    ) -> (Tensor<4>, UNetTape<'_>) {
        let sample = sample.inner();
        let ehs = encoder_hidden_states.inner();
        let [batch, _, height, width] = sample.dims();
        let up_factor = 1usize << self.up_blocks.iter().filter(|b| b.has_upsampler()).count();
        let forward_upsample_size = height % up_factor != 0 || width % up_factor != 0;
        let t_emb = self.time_proj.forward(timesteps, batch, &self.device());
        let emb = self.time_embedding.forward(t_emb);
        let temb = match self.time_embed_act {
            Some(act) => act.forward(emb),
            None => emb,
        };
        let ops = self.ops();
        let first_tf = ops.iter().position(|o| matches!(o, Op::Transformer(_))).unwrap_or(ops.len());
        let mut tape = UNetTape { unet: self, ops: Vec::new(), inputs: Vec::new(), cat: Vec::new(), up_sizes: Vec::new(), temb, ehs };
        let mut x = if self.center_input_sample { sample * 2.0 - 1.0 } else { sample };
        let mut skips: Vec<(usize, Tensor<4>)> = Vec::new();
        let mut pushed = 0;
        let last_up = self.up_blocks.len().saturating_sub(1);
        for (k, op) in ops.iter().enumerate() {
            let keep = k >= first_tf && !matches!(op, Op::PushSkip | Op::CatSkip | Op::ConvIn);
            tape.inputs.push(keep.then(|| x.clone()));
            x = match op {
                Op::PushSkip => {
                    skips.push((pushed, x.clone()));
                    pushed += 1;
                    x
                }
                Op::CatSkip => {
                    let (idx, skip) = skips.pop().expect("an up block got fewer skip connections than it has resnets");
                    tape.cat.push((idx, x.dims()[1]));
                    Tensor::cat(vec![x, skip], 1)
                }
                Op::Up(_, i) => {
                    let size = (*i != last_up && forward_upsample_size).then(|| skips.last().map(|(_, t)| [t.dims()[2], t.dims()[3]])).flatten();
                    tape.up_sizes.push(size);
                    tape.apply(op, x, &tape.ehs.clone(), size)
                }
                Op::Transformer(t) if !capture.paths.is_empty() => t.forward(x, &tape.ehs.clone(), capture),
                _ => tape.apply(op, x, &tape.ehs.clone(), None),
            };
            if !capture.paths.is_empty() && matches!(op, Op::Transformer(t) if transformer_paths(t).iter().any(|p| capture.wants(p))) && capture.paths.iter().all(|p| capture.probs.contains_key(p)) {
                let mut ops = ops;
                ops.truncate(k + 1);
                tape.ops = ops;
                return (x, tape);
            }
        }
        tape.ops = ops;
        (x, tape)
    }
}

impl UNetTape<'_> {
    fn apply(&self, op: &Op<'_>, x: Tensor<4>, ehs: &Tensor<3>, up_size: Option<[usize; 2]>) -> Tensor<4> {
        let u = self.unet;
        match op {
            Op::ConvIn => u.conv_in.forward(x),
            Op::Resnet(r) => r.forward(x, Some(&self.temb)),
            Op::Transformer(t) => t.forward(x, ehs, &mut AttnCapture::default()),
            Op::Attn(a) => a.forward_spatial(x, &mut AttnCapture::default()),
            Op::Down(d) => d.forward(x),
            Op::Up(up, _) => up.forward(x, up_size),
            Op::Out => u.conv_out.forward(u.conv_act.forward(u.conv_norm_out.forward(x))),
            Op::PushSkip | Op::CatSkip => unreachable!("bookkeeping ops are not applied"),
        }
    }

    /// d(sum(prediction * g_out)) / d encoder_hidden_states: `g_out` `[batch, out_channels, h,
    /// w]` -> `[batch, keys, cross_attention_dim]` (a plain tensor, no graph).
    pub fn backward_ehs(self, g_out: Tensor<4>) -> Tensor<3> {
        self.backward_ehs_with_probs(g_out, &HashMap::new())
    }

    /// d(sum(prediction * g_out) + sum_p sum(probs[p] * g_probs[p])) / d encoder_hidden_states:
    /// [`Self::backward_ehs`] plus gradients on attention probabilities captured by
    /// [`UNet2DConditionModel::forward_checkpointed_capture`] (`g_probs[path]`: `[batch, heads,
    /// queries, keys]`). A transformer holding such a path is re-run on the autodiff device with
    /// its probabilities in the graph; the others use their memory-efficient VJP.
    pub fn backward_ehs_with_probs(mut self, g_out: Tensor<4>, g_probs: &HashMap<String, Tensor<4>>) -> Tensor<3> {
        let ops = std::mem::take(&mut self.ops);
        let first_tf = ops.iter().position(|o| matches!(o, Op::Transformer(_))).unwrap_or(ops.len());
        let mut g = g_out.inner();
        let mut g_ehs: Option<Tensor<3>> = None;
        let n_skips = ops.iter().filter(|o| matches!(o, Op::PushSkip)).count();
        let mut g_skip: Vec<Option<Tensor<4>>> = (0..n_skips).map(|_| None).collect();
        let mut cat_i = self.cat.len();
        let mut up_i = self.up_sizes.len();
        let mut push_i = n_skips;
        for k in (first_tf..ops.len()).rev() {
            match &ops[k] {
                Op::PushSkip => {
                    push_i -= 1;
                    if let Some(s) = g_skip[push_i].take() {
                        g = g + s;
                    }
                }
                Op::CatSkip => {
                    cat_i -= 1;
                    let (idx, c) = self.cat[cat_i];
                    let total = g.dims()[1];
                    g_skip[idx] = Some(g.clone().narrow(1, c, total - c));
                    g = g.narrow(1, 0, c);
                }
                op => {
                    let size = if matches!(op, Op::Up(..)) {
                        up_i -= 1;
                        self.up_sizes[up_i]
                    } else {
                        None
                    };
                    let x = self.inputs[k].take().expect("input kept for every re-run op");
                    let probed: Vec<String> = match op {
                        Op::Transformer(t) => transformer_paths(t).into_iter().filter(|p| g_probs.contains_key(p)).collect(),
                        _ => Vec::new(),
                    };
                    if let (Op::Transformer(t), false) = (op, probed.is_empty()) {
                        let x = x.autodiff().require_grad();
                        let ehs = self.ehs.clone().autodiff().require_grad();
                        let mut cap = AttnCapture::of(probed.iter().cloned());
                        let out = t.forward(x.clone(), &ehs, &mut cap);
                        let mut surrogate = (out * g.clone().autodiff()).sum();
                        for p in &probed {
                            let probs = cap.probs.remove(p).expect("the re-run captured the path");
                            surrogate = surrogate + (probs * g_probs[p].clone().autodiff()).sum();
                        }
                        let grads = surrogate.backward();
                        let ge = ehs.grad(&grads).unwrap_or_else(|| self.ehs.zeros_like());
                        g_ehs = Some(match g_ehs {
                            Some(acc) => acc + ge,
                            None => ge,
                        });
                        g = x.grad(&grads).expect("the hidden state reaches the output");
                    } else if let Op::Transformer(t) = op {
                        // memory-efficient: attention differentiated one query chunk at a time
                        let (gx, ge) = t.vjp(x, &self.ehs, g);
                        g_ehs = Some(match g_ehs {
                            Some(acc) => acc + ge,
                            None => ge,
                        });
                        g = gx;
                    } else {
                        let x = x.autodiff().require_grad();
                        let out = self.apply(op, x.clone(), &self.ehs.clone(), size);
                        let grads = (out * g.clone().autodiff()).sum().backward();
                        g = x.grad(&grads).expect("the hidden state reaches the output");
                    }
                }
            }
        }
        g_ehs.unwrap_or_else(|| self.ehs.zeros_like())
    }
}

/// The attention paths (`attn1`, `attn2` of every block) of a transformer.
fn transformer_paths(t: &Transformer2DModel) -> Vec<String> {
    t.transformer_blocks.iter().flat_map(|b| [b.attn1.path.clone(), b.attn2.path.clone()]).collect()
}
