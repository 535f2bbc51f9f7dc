//! The wasm-bindgen surface loaded by `www/worker.js`: one [`Session`] object holding the
//! tokenizer and text encoder on WebGPU. Weights are read tensor by tensor from `Blob` slices
//! (the JS side downloads into Blobs, which the browser may keep on disk), so a large file
//! never sits whole in wasm memory. Every readback is `into_data_async().await`.

use std::cell::{Ref, RefCell};

use burn::tensor::Device;
use serde::Serialize as _;
use js_sys::{Array, Float32Array, Function, Object, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::Blob;

use crate::error::{ConfigError, Error, WeightsError};
use crate::loader::{load_text_encoder, load_unet, load_vae, unet_sample_size};
use crate::pipeline::{PromptEncoder, StableDiffusion};
use crate::schedulers::{SchedulerConfig, SchedulerKind};

mod generate;
mod heatmaps;
mod single_file;
mod train;
use crate::tokenizer::{ClipTokenizer, TokenizerFiles};
use crate::weights::{ByteSource, WeightStorage};

thread_local! {
    /// The WebGPU device, initialised once per worker (burn's runtime cannot be re-initialised).
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A `Blob` (or `File`) read by byte ranges. With a cancel flag (a JS object whose `cancelled`
/// the worker sets when the user cancels a load), reads after it is set fail, so a load stops
/// at the next tensor.
pub struct BlobSource {
    name: String,
    blob: Blob,
    cancel: Option<JsValue>,
}

impl BlobSource {
    pub fn new(name: impl Into<String>, blob: Blob) -> Self {
        Self { name: name.into(), blob, cancel: None }
    }

    /// This source with the cancel flag `files.__cancel` (if the worker passed one).
    pub fn cancellable(mut self, files: &Object) -> Self {
        self.cancel = Reflect::get(files, &JsValue::from_str("__cancel")).ok().filter(|v| v.is_object());
        self
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().and_then(|c| Reflect::get(c, &JsValue::from_str("cancelled")).ok()).is_some_and(|v| v.is_truthy())
    }
}

impl ByteSource for BlobSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.blob.size() as u64
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, WeightsError> {
        if self.cancelled() {
            return Err(WeightsError::Io { file: self.name.clone(), reason: "loading was cancelled".into() });
        }
        let io = |e: JsValue| WeightsError::Io { file: self.name.clone(), reason: format!("{e:?}") };
        let slice = self.blob.slice_with_f64_and_f64(offset as f64, (offset + len as u64) as f64).map_err(io)?;
        let buf = JsFuture::from(slice.array_buffer()).await.map_err(io)?;
        let bytes = js_sys::Uint8Array::new(&buf).to_vec();
        if bytes.len() != len {
            return Err(WeightsError::Io { file: self.name.clone(), reason: format!("short read: {} of {len} bytes at {offset}", bytes.len()) });
        }
        Ok(bytes)
    }
}

pub(crate) fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

async fn device() -> Result<Device, JsValue> {
    if let Some(d) = DEVICE.with(|d| d.borrow().clone()) {
        return Ok(d);
    }
    let d = Device::wgpu_options()
        .init_async()
        .await
        .map_err(|e| js_err(format!("WebGPU initialisation failed: {e}. Use a browser with WebGPU enabled (Chrome/Edge 113+).")))?;
    DEVICE.with(|slot| *slot.borrow_mut() = Some(d.clone()));
    Ok(d)
}

fn get_blob(files: &Object, key: &str) -> Option<Blob> {
    Reflect::get(files, &JsValue::from_str(key)).ok().and_then(|v| v.dyn_into::<Blob>().ok())
}

async fn blob_text(files: &Object, key: &str, required: bool) -> Result<Option<String>, JsValue> {
    let Some(blob) = get_blob(files, key) else {
        return if required {
            Err(js_err(ConfigError::Io { file: key.into(), reason: "missing from the model folder".into() }))
        } else {
            Ok(None)
        };
    };
    let text = JsFuture::from(blob.text()).await?;
    Ok(text.as_string())
}

pub(crate) fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

/// What a session has loaded: the text side only, or the whole pipeline.
enum Loaded {
    Text(PromptEncoder),
    Full(Box<StableDiffusion>),
}

/// One loaded model on the WebGPU device.
#[wasm_bindgen]
pub struct Session {
    /// Mutated only to add tokens (imported or freshly trained embeddings).
    loaded: RefCell<Loaded>,
    info: serde_json::Value,
    running: RefCell<Option<generate::Running>>,
    training: RefCell<Option<train::Training>>,
}

impl Session {
    fn encoder(&self) -> Ref<'_, PromptEncoder> {
        Ref::map(self.loaded.borrow(), |l| match l {
            Loaded::Text(e) => e,
            Loaded::Full(sd) => &sd.prompt,
        })
    }

    fn sd(&self) -> Result<Ref<'_, StableDiffusion>, JsValue> {
        Ref::filter_map(self.loaded.borrow(), |l| match l {
            Loaded::Full(sd) => Some(&**sd),
            Loaded::Text(_) => None,
        })
        .map_err(|_| js_err("this model folder has no unet/ and vae/: it can encode prompts but not generate"))
    }

    /// The prompt encoder for adding tokens; fails while a generation holds the model.
    fn encoder_mut(&self) -> Result<std::cell::RefMut<'_, PromptEncoder>, JsValue> {
        let l = self.loaded.try_borrow_mut().map_err(|_| js_err("the model is busy (a generation is running); try again when it has finished"))?;
        Ok(std::cell::RefMut::map(l, |l| match l {
            Loaded::Text(e) => e,
            Loaded::Full(sd) => &mut sd.prompt,
        }))
    }
}

impl Session {
    /// A diffusers folder (`files` maps its relative paths to Blobs): the text encoder, and the
    /// UNet, VAE and scheduler when `unet/config.json` is there. Returns what was loaded, the text
    /// encoder's config, its weights file and their dtype.
    async fn load_folder(
        files: &Object,
        tok_files: TokenizerFiles,
        device: &Device,
        storage: WeightStorage,
        progress_for: &dyn Fn(&'static str) -> Box<dyn FnMut(usize, usize, &str)>,
    ) -> Result<(Loaded, crate::models::CLIPTextConfig, String, String), JsValue> {
        let tokenizer = ClipTokenizer::from_files(&tok_files).map_err(js_err)?;
        let config = blob_text(files, "text_encoder/config.json", true).await?.unwrap_or_default();
        let source = weights_source(files, "text_encoder/", &["text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors"])?;
        let weights_key = source.name().to_string();
        let header = crate::weights::SafetensorsHeader::read(&source).await.map_err(js_err)?;
        let dtype = header.tensors.values().next().map(|e| e.dtype_name.clone()).unwrap_or_default();
        let model = load_text_encoder(&config, "text_encoder/config.json", &source, device, storage, &mut progress_for("text_encoder"))
            .await
            .map_err(|e: Error| js_err(e))?;
        let cfg = crate::models::CLIPTextConfig::from_json(&config, "text_encoder/config.json").map_err(js_err)?;
        let prompt = PromptEncoder::new(tokenizer, model);
        let loaded = if get_blob(files, "unet/config.json").is_some() {
            let unet_config = blob_text(files, "unet/config.json", true).await?.unwrap_or_default();
            let unet_src = weights_source(files, "unet/", &["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"])?;
            let unet = load_unet(&unet_config, "unet/config.json", &unet_src, device, storage, &mut progress_for("unet")).await.map_err(js_err)?;
            let vae_config = blob_text(files, "vae/config.json", true).await?.unwrap_or_default();
            let vae_src = weights_source(files, "vae/", &["vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"])?;
            let vae = load_vae(&vae_config, "vae/config.json", &vae_src, device, storage, &mut progress_for("vae")).await.map_err(js_err)?;
            let sched_text = blob_text(files, "scheduler/scheduler_config.json", true).await?.unwrap_or_default();
            let scheduler_config = SchedulerConfig::from_json(&sched_text, "scheduler/scheduler_config.json").map_err(js_err)?;
            let default_scheduler = SchedulerKind::from_config(&scheduler_config).map_err(js_err)?;
            let name = Reflect::get(files, &JsValue::from_str("__name")).ok().and_then(|v| v.as_string()).unwrap_or_else(|| "model".into());
            let sample_size = unet_sample_size(&unet_config);
            Loaded::Full(Box::new(StableDiffusion { prompt, unet, vae, scheduler_config, default_scheduler, name, sample_size }))
        } else {
            Loaded::Text(prompt)
        };
        Ok((loaded, cfg, weights_key, dtype))
    }
}

/// The first of `candidates` present in `files`, as a byte source.
fn weights_source(files: &Object, dir: &str, candidates: &[&str]) -> Result<BlobSource, JsValue> {
    candidates
        .iter()
        .find_map(|k| get_blob(files, k).map(|b| BlobSource::new(*k, b).cancellable(files)))
        .ok_or_else(|| js_err(WeightsError::NoWeightsFile { dir: dir.into(), tried: candidates.iter().map(|s| s.to_string()).collect() }))
}

#[wasm_bindgen]
impl Session {
    /// Loads a model from `files`: an object mapping paths relative to the model folder
    /// (`tokenizer/vocab.json`, `text_encoder/model.safetensors`, ...) to Blobs, or, for a
    /// single-file (original LDM) checkpoint, `__single_file` (its Blob), `__single_file_name`,
    /// the tokenizer files and optionally configs and `__prediction_type` (see `single_file`).
    /// `on_progress({stage, loaded, total, key})` is called after each tensor.
    pub async fn load(files: Object, on_progress: Function) -> Result<Session, JsValue> {
        let t0 = js_sys::Date::now();
        let device = device().await?;
        let storage = match Reflect::get(&files, &JsValue::from_str("__storage")).ok().and_then(|v| v.as_string()).as_deref() {
            Some("f16") => WeightStorage::F16,
            _ => WeightStorage::F32,
        };
        let tok_files = TokenizerFiles {
            vocab_json: blob_text(&files, "tokenizer/vocab.json", true).await?.unwrap_or_default(),
            merges_txt: blob_text(&files, "tokenizer/merges.txt", true).await?.unwrap_or_default(),
            tokenizer_config_json: blob_text(&files, "tokenizer/tokenizer_config.json", false).await?,
            special_tokens_map_json: blob_text(&files, "tokenizer/special_tokens_map.json", false).await?,
        };
        let progress_for = |stage: &'static str| -> Box<dyn FnMut(usize, usize, &str)> {
            let on_progress = on_progress.clone();
            Box::new(move |done: usize, total: usize, key: &str| {
                let o = Object::new();
                set(&o, "stage", stage);
                set(&o, "loaded", done as f64);
                set(&o, "total", total as f64);
                set(&o, "key", key);
                let _ = on_progress.call1(&JsValue::NULL, &o);
            })
        };
        let (loaded, cfg, weights_key, dtype) = if let Some(blob) = get_blob(&files, single_file::SINGLE_FILE_KEY) {
            // a single-file (original LDM) checkpoint, converted while loading
            let name = Reflect::get(&files, &JsValue::from_str("__single_file_name")).ok().and_then(|v| v.as_string()).unwrap_or_else(|| "checkpoint.safetensors".into());
            let source = BlobSource::new(name.clone(), blob).cancellable(&files);
            let (mut sd, cfg, dtype) = single_file::load(&files, &source, tok_files, &device, storage, &progress_for).await?;
            if let Some(n) = Reflect::get(&files, &JsValue::from_str("__name")).ok().and_then(|v| v.as_string()) {
                sd.name = n;
            }
            (Loaded::Full(Box::new(sd)), cfg, name, dtype)
        } else {
            Self::load_folder(&files, tok_files, &device, storage, &progress_for).await?
        };
        let (can_generate, default_size, default_scheduler) = match &loaded {
            Loaded::Full(sd) => (true, sd.default_size(), sd.default_scheduler.cli_name()),
            Loaded::Text(_) => (false, 0, ""),
        };
        let info = serde_json::json!({
            "can_generate": can_generate,
            "default_size": default_size,
            "default_scheduler": default_scheduler,
            "backend": "webgpu (burn wgpu)",
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_hidden_layers,
            "num_heads": cfg.num_attention_heads,
            "vocab_size": cfg.vocab_size,
            "hidden_act": cfg.hidden_act,
            "weights_file": weights_key,
            "weights_dtype": dtype,
            "weights_storage": format!("{storage:?}").to_lowercase(),
            "load_ms": js_sys::Date::now() - t0,
        });
        Ok(Session { loaded: RefCell::new(loaded), info, running: RefCell::new(None), training: RefCell::new(None) })
    }

    /// `{backend, hidden_size, num_layers, num_heads, vocab_size, hidden_act, weights_file,
    /// weights_dtype, load_ms}`
    pub fn info(&self) -> Result<JsValue, JsValue> {
        self.info.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
    }

    /// `{input_ids: number[77], ids: number[], tokens: string[], converted_prompt, truncated}`
    pub fn tokenize(&self, prompt: &str) -> Result<JsValue, JsValue> {
        self.encoder().tokenize(prompt).serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
    }

    /// Encodes `prompt`: `{input_ids, tokens, shape: [1,77,D], data: Float32Array, millis, min,
    /// max, mean, std}` (`data` = `last_hidden_state` flattened).
    pub async fn encode(&self, prompt: &str) -> Result<JsValue, JsValue> {
        let t0 = js_sys::Date::now();
        let (toks, out) = self.encoder().encode(&[prompt], false).map_err(js_err)?;
        let dims = out.last_hidden_state.dims();
        let data = out.last_hidden_state.into_data_async().await.map_err(|e| js_err(format!("readback failed: {e:?}")))?;
        let values: Vec<f32> = data.convert::<f32>().try_into_vec::<f32>().map_err(|e| js_err(format!("{e:?}")))?;
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let (min, max) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let o = Object::new();
        set(&o, "input_ids", toks[0].input_ids.iter().map(|&i| JsValue::from(i)).collect::<Array>());
        set(&o, "tokens", toks[0].tokens.iter().map(|t| JsValue::from_str(t)).collect::<Array>());
        set(&o, "shape", dims.iter().map(|&d| JsValue::from(d as u32)).collect::<Array>());
        set(&o, "data", Float32Array::from(values.as_slice()));
        set(&o, "millis", js_sys::Date::now() - t0);
        set(&o, "min", min as f64);
        set(&o, "max", max as f64);
        set(&o, "mean", mean);
        set(&o, "std", var.sqrt());
        Ok(o.into())
    }
}

