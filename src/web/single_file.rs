//! Single-file (original-LDM) checkpoints in the browser: the `Blob` of a
//! `v1-5-pruned-emaonly.safetensors`-style file is split into diffusers components by
//! [`LdmCheckpoint::from_header`] (header only, no tensor bytes) and streamed tensor by tensor
//! from the Blob, like diffusers' `StableDiffusionPipeline.from_single_file`. Native twin:
//! `crate::single_file`.
//!
//! The file carries no tokenizer and no configs: `www/worker.js` passes the tokenizer files it
//! has (picked alongside, else the CLIP BPE files that ship with the app: SD 1 and SD 2 share
//! them; the pad token is set from the checkpoint), configs picked alongside replace the ones
//! inferred from the tensor shapes (diffusers' `config=`), and `__prediction_type` sets
//! v-prediction for the SD 2.x 768-v models.

use js_sys::{Object, Reflect};
use wasm_bindgen::prelude::*;

use super::{blob_text, js_err, BlobSource};
use crate::error::{Error, WeightsError};
use crate::loader::{load_text_encoder_from, load_unet_from, load_vae_from, unet_sample_size};
use crate::models::{AutoencoderKLConfig, CLIPTextConfig, UNet2DConditionConfig};
use crate::pipeline::{PromptEncoder, StableDiffusion};
use crate::schedulers::{PredictionType, SchedulerConfig, SchedulerKind};
use crate::tokenizer::{ClipTokenizer, TokenizerFiles};
use crate::weights::{ByteSource, LdmCheckpoint, SafetensorsHeader, WeightStorage};
use burn::tensor::Device;

/// Key of the checkpoint's Blob in the `files` object given to `Session.load`.
pub const SINGLE_FILE_KEY: &str = "__single_file";

/// A component's config: the picked `name` when present, else `infer()`; with the name used in
/// messages.
async fn config_text(files: &Object, name: &str, infer: impl FnOnce() -> Result<String, WeightsError>) -> Result<(String, String), JsValue> {
    match blob_text(files, name, false).await? {
        Some(text) => Ok((text, name.to_string())),
        None => Ok((infer().map_err(js_err)?, format!("{name} (inferred from the checkpoint)"))),
    }
}

/// Loads the whole pipeline of the checkpoint `source` (see the module docs); returns it with the
/// text encoder's config and the weights' dtype.
pub(super) async fn load(
    files: &Object,
    source: &BlobSource,
    mut tok_files: TokenizerFiles,
    device: &Device,
    storage: WeightStorage,
    progress_for: &dyn Fn(&'static str) -> Box<dyn FnMut(usize, usize, &str)>,
) -> Result<(StableDiffusion, CLIPTextConfig, String), JsValue> {
    let prediction = match Reflect::get(files, &JsValue::from_str("__prediction_type")).ok().and_then(|v| v.as_string()) {
        Some(p) if !p.is_empty() => Some(p.parse::<PredictionType>().map_err(js_err)?),
        _ => None,
    };
    let header = SafetensorsHeader::read(source).await.map_err(js_err)?;
    let dtype = header.tensors.values().next().map(|e| e.dtype_name.clone()).unwrap_or_default();
    let ckpt = LdmCheckpoint::from_header(&header).map_err(js_err)?;
    drop(header);
    tok_files.set_pad_token(ckpt.pad_token());
    let tokenizer = ClipTokenizer::from_files(&tok_files).map_err(js_err)?;

    let (text, file) = config_text(files, "text_encoder/config.json", || ckpt.text_encoder_config()).await?;
    let te_config = CLIPTextConfig::from_json(&text, &file).map_err(js_err)?;
    let model = load_text_encoder_from(&te_config, &ckpt.text_encoder, source, device, storage, &mut progress_for("text_encoder"))
        .await
        .map_err(|e: Error| js_err(e))?;
    let prompt = PromptEncoder::new(tokenizer, model);

    let (text, file) = config_text(files, "unet/config.json", || ckpt.unet_config(prediction)).await?;
    let sample_size = unet_sample_size(&text);
    let config = UNet2DConditionConfig::from_json(&text, &file).map_err(js_err)?;
    let unet = load_unet_from(&config, &ckpt.unet, source, device, storage, &mut progress_for("unet")).await.map_err(js_err)?;

    let (text, file) = config_text(files, "vae/config.json", || ckpt.vae_config()).await?;
    let config = AutoencoderKLConfig::from_json(&text, &file).map_err(js_err)?;
    let vae = load_vae_from(&config, &ckpt.vae, source, device, storage, &mut progress_for("vae")).await.map_err(js_err)?;

    let (text, file) = config_text(files, "scheduler/scheduler_config.json", || Ok(ckpt.scheduler_config(prediction))).await?;
    let mut scheduler_config = SchedulerConfig::from_json(&text, &file).map_err(js_err)?;
    if let Some(p) = prediction {
        scheduler_config.prediction_type = Some(p.as_str().to_string());
    }
    let default_scheduler = SchedulerKind::from_config(&scheduler_config).map_err(js_err)?;
    let name = source.name().trim_end_matches(".safetensors").to_string();
    let sd = StableDiffusion { prompt, unet, vae, scheduler_config, default_scheduler, name, sample_size };
    Ok((sd, te_config, dtype))
}
