//! The differentiable part of a textual-inversion step: text encoder with the placeholder rows
//! substituted, DDPM noising, UNet, MSE loss.
//!
//! Only the trainable rows carry an autodiff graph. The frozen model may live on a plain device
//! (its tensors then enter the graph as constants) or on an autodiff device with its parameters
//! marked `no_grad`; either way backward only computes what the rows need (plus the
//! activations' gradients along the way), never gradients of frozen weights.

use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::models::{CLIPTextModel, UNet2DConditionModel, UNetCapture};
use crate::schedulers::{PredictionType, add_noise_ddpm, velocity};

/// One training batch, given explicitly.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, C, h, w]` latents, already multiplied by the VAE scaling factor, on the model device.
    pub latents: Tensor<4>,
    /// `[B, C, h, w]` standard-normal noise, on the model device.
    pub noise: Tensor<4>,
    /// One integer training timestep in `[0, num_train_timesteps)` per batch element.
    pub timesteps: Vec<usize>,
    /// `B` rows of `model_max_length` (77) token ids, e.g. from
    /// [`super::TextualInversionTrainer::prompt_ids`].
    pub input_ids: Vec<Vec<u32>>,
}

/// Token embeddings `[B, S, D]` of `input_ids`, where every position holding
/// `placeholder_ids[r]` takes row `r` of `rows` (`[n, D]`, may be tracked by autodiff) and every
/// other position the frozen token-embedding row.
pub fn token_embeddings(text_encoder: &CLIPTextModel, input_ids: &[Vec<u32>], placeholder_ids: &[u32], rows: Tensor<2>) -> Tensor<3> {
    let device = text_encoder.device();
    let rows_device = rows.device();
    let b = input_ids.len();
    let s = input_ids.first().map_or(0, Vec::len);
    let d = rows.dims()[1];
    let flat: Vec<i32> = input_ids.iter().flatten().map(|&i| i as i32).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, s]), &device);
    let frozen = text_encoder.text_model.embeddings.token_embedding.forward(ids);
    // index of the trainable row per position (0 where the position is not a placeholder)
    let row_of = |id: u32| placeholder_ids.iter().position(|&p| p == id);
    let select: Vec<i32> = input_ids.iter().flatten().map(|&i| row_of(i).unwrap_or(0) as i32).collect();
    let mask: Vec<bool> = input_ids.iter().flatten().map(|&i| row_of(i).is_some()).collect();
    let select = Tensor::<2, Int>::from_data(TensorData::new(select, [b, s]), &rows_device);
    let trained = burn::tensor::module::embedding(rows, select);
    let mask = Tensor::<3, Bool>::from_data(TensorData::new(mask, [b, s, 1]), &device).expand([b, s, d]);
    frozen.mask_where(mask, trained)
}

/// `CLIPTextModel` from precomputed token embeddings (`[B, S, D]`) to `last_hidden_state`
/// (`[B, S, D]`): position embeddings, causal transformer layers, final LayerNorm; the same
/// computation as [`CLIPTextModel::forward`].
pub fn text_encoder_from_embeddings(text_encoder: &CLIPTextModel, token_embeds: Tensor<3>) -> Tensor<3> {
    let device = text_encoder.device();
    let [b, s, _] = token_embeds.dims();
    let tm = &text_encoder.text_model;
    let positions = Tensor::<2, Int>::from_data(TensorData::new((0..s as i32).collect::<Vec<_>>(), [1, s]), &device);
    let mut x = token_embeds + tm.embeddings.position_embedding.forward(positions);
    let mask: Vec<bool> = (0..s).flat_map(|i| (0..s).map(move |j| j > i)).collect();
    let heads = tm.encoder.layers.first().map_or(1, |l| l.self_attn.num_heads);
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [s, s]), &device).reshape([1, 1, s, s]).expand([b, heads, s, s]);
    for layer in &tm.encoder.layers {
        x = layer.forward(x, mask.clone());
    }
    tm.final_layer_norm.forward(x)
}

/// What the UNet is trained to predict: the noise (`epsilon`) or the velocity
/// (`v_prediction`), `[B, C, h, w]`.
fn training_target(alphas_cumprod: &[f64], prediction_type: PredictionType, batch: &Batch) -> Tensor<4> {
    match prediction_type {
        PredictionType::VPrediction => velocity(alphas_cumprod, batch.latents.clone(), batch.noise.clone(), &batch.timesteps),
        _ => batch.noise.clone(),
    }
}

/// The textual-inversion loss `mean((unet(noisy, t, ehs) - target)^2)` as a `[1]` tensor in
/// the autodiff graph of `rows`, where `noisy = sqrt(acp[t]) x + sqrt(1 - acp[t]) n`,
/// `ehs = text_encoder(input_ids)` with the placeholder rows substituted, and `target` the noise
/// (`epsilon`) or the velocity (`v_prediction`).
///
/// The batch must have been checked (see `TextualInversionTrainer::check_batch`).
pub fn diffusion_loss(
    text_encoder: &CLIPTextModel,
    unet: &UNet2DConditionModel,
    alphas_cumprod: &[f64],
    prediction_type: PredictionType,
    placeholder_ids: &[u32],
    rows: Tensor<2>,
    batch: &Batch,
) -> Tensor<1> {
    let embeds = token_embeddings(text_encoder, &batch.input_ids, placeholder_ids, rows);
    let ehs = text_encoder_from_embeddings(text_encoder, embeds);
    let noisy = add_noise_ddpm(alphas_cumprod, batch.latents.clone(), batch.noise.clone(), &batch.timesteps);
    let t: Vec<f64> = batch.timesteps.iter().map(|&t| t as f64).collect();
    let pred = unet.forward(noisy, &t, ehs, &mut UNetCapture::none());
    let target = training_target(alphas_cumprod, prediction_type, batch);
    let diff = pred - target;
    (diff.clone() * diff).mean()
}

/// [`diffusion_loss`] with the UNet checkpointed ([`UNet2DConditionModel::forward_checkpointed`]):
/// returns the loss (`[1]`, plain), the text-encoder output `ehs` (`[B, S, D]`, in the autodiff
/// graph of `rows`) and `d (scale * loss) / d ehs` (plain), so that
/// `sum(ehs * g_ehs).backward()` gives the rows' gradient.
#[allow(clippy::too_many_arguments)]
pub fn diffusion_loss_checkpointed(
    text_encoder: &CLIPTextModel,
    unet: &UNet2DConditionModel,
    alphas_cumprod: &[f64],
    prediction_type: PredictionType,
    placeholder_ids: &[u32],
    rows: Tensor<2>,
    batch: &Batch,
    scale: f64,
) -> (Tensor<1>, Tensor<3>, Tensor<3>) {
    let embeds = token_embeddings(text_encoder, &batch.input_ids, placeholder_ids, rows);
    let ehs = text_encoder_from_embeddings(text_encoder, embeds);
    let noisy = add_noise_ddpm(alphas_cumprod, batch.latents.clone(), batch.noise.clone(), &batch.timesteps);
    let t: Vec<f64> = batch.timesteps.iter().map(|&t| t as f64).collect();
    let (pred, tape) = unet.forward_checkpointed(noisy, &t, ehs.clone());
    let target = training_target(alphas_cumprod, prediction_type, batch);
    let diff = pred - target.inner();
    let n = diff.shape().num_elements() as f64;
    let loss = (diff.clone() * diff.clone()).mean();
    let g_ehs = tape.backward_ehs(diff * (2.0 * scale / n));
    (loss, ehs, g_ehs)
}
