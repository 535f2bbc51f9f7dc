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
use crate::loader::{LoadOptions, LoadProgress, Loaded};
use crate::pipeline::{PromptEncoder, StableDiffusion};
use crate::weights::ByteSource;

mod generate;
mod heatmaps;
mod train;

thread_local! {
    /// The WebGPU device, initialised once per worker (burn's runtime cannot be re-initialised).
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A `Blob` (or `File`) read by byte ranges.
pub struct BlobSource {
    name: String,
    blob: Blob,
}

impl BlobSource {
    pub fn new(name: impl Into<String>, blob: Blob) -> Self {
        Self { name: name.into(), blob }
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

/// A library error for the page: the message, plus `remedy` (`configs`, `tokenizer`, ...,
/// `setting`) and `setting` (a field name) so the page can point at its own control.
pub(crate) fn lib_err(e: Error) -> JsValue {
    use crate::error::Remedy;
    let v: JsValue = JsError::new(&e.to_string()).into();
    let remedy = match e.remedy() {
        Some(Remedy::Tokenizer) => Some("tokenizer"),
        Some(Remedy::Configs) => Some("configs"),
        Some(Remedy::Embedding) => Some("embedding"),
        Some(Remedy::EmbeddingToken) => Some("embedding_token"),
        Some(Remedy::Cpu) => Some("cpu"),
        Some(Remedy::Scheduler) => Some("scheduler"),
        Some(Remedy::Setting(s)) => {
            let _ = Reflect::set(&v, &JsValue::from_str("setting"), &JsValue::from_str(s));
            Some("setting")
        }
        None => None,
    };
    if let Some(r) = remedy {
        let _ = Reflect::set(&v, &JsValue::from_str("remedy"), &JsValue::from_str(r));
    }
    v
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

/// A model's files as the page hands them over: relative paths (`unet/config.json`, a single
/// file's name) mapped to `Blob`s (see [`crate::loader::ModelFiles`]).
pub struct BlobFiles(Object);

impl BlobFiles {
    fn blob(&self, path: &str) -> Option<Blob> {
        Reflect::get(&self.0, &JsValue::from_str(path)).ok().and_then(|v| v.dyn_into::<Blob>().ok())
    }
}

impl crate::loader::ModelFiles for BlobFiles {
    type Source = BlobSource;
    fn open(&self, path: &str) -> Result<Option<BlobSource>, Error> {
        Ok(self.blob(path).map(|b| BlobSource::new(path, b)))
    }
    async fn read_text(&self, path: &str) -> Result<Option<String>, Error> {
        let Some(blob) = self.blob(path) else { return Ok(None) };
        let text = JsFuture::from(blob.text()).await.map_err(|e| ConfigError::Io { file: path.into(), reason: format!("{e:?}") })?;
        Ok(text.as_string())
    }
    fn display(&self, path: &str) -> String {
        path.to_string()
    }
}

pub(crate) fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
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
        Ref::map(self.loaded.borrow(), Loaded::prompt)
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
        Ok(std::cell::RefMut::map(l, Loaded::prompt_mut))
    }
}

#[wasm_bindgen]
impl Session {
    /// Loads a model through [`crate::loader::load`]: `files` maps paths relative to the model
    /// folder (`tokenizer/vocab.json`, `text_encoder/model.safetensors`, ..., or a single file's
    /// name with any picked configs and the tokenizer files) to Blobs; `options` is a
    /// [`LoadOptions`] object (`{name, storage, variant, single_file, prediction_type}`).
    /// `on_progress({stage, loaded, total, key})` is called after each tensor; when it returns
    /// `false` the load stops before the next tensor and rejects with `cancelled`.
    pub async fn load(files: Object, options: JsValue, on_progress: Function) -> Result<Session, JsValue> {
        let t0 = js_sys::Date::now();
        let device = device().await?;
        let opts: LoadOptions = if options.is_undefined() || options.is_null() { LoadOptions::default() } else { serde_wasm_bindgen::from_value(options).map_err(js_err)? };
        let mut progress = |p: LoadProgress<'_>| {
            let o = Object::new();
            set(&o, "stage", p.stage);
            set(&o, "loaded", p.loaded as f64);
            set(&o, "total", p.total as f64);
            set(&o, "key", p.key);
            on_progress.call1(&JsValue::NULL, &o).map_or(true, |v| v.as_bool() != Some(false))
        };
        let (loaded, report) = crate::loader::load(&BlobFiles(files), &opts, &device, &mut progress).await.map_err(lib_err)?;
        let (can_generate, default_size, default_scheduler) = match &loaded {
            Loaded::Full(sd) => (true, sd.default_size(), sd.default_scheduler.cli_name()),
            Loaded::Text(_) => (false, 0, ""),
        };
        let cfg = &report.text_config;
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
            "weights_file": report.weights_file,
            "weights_dtype": report.weights_dtype,
            "weights_storage": format!("{:?}", opts.storage).to_lowercase(),
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


/// Every job's default settings (`{generate, suppress, edit, train, ...}`, the library's
/// `Default`s, see [`crate::jobs::defaults_json`]): the page fills its fields from these.
#[wasm_bindgen]
pub fn settings_defaults() -> Result<JsValue, JsValue> {
    crate::jobs::defaults_json().serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
}

/// Bytes in use and reserved in the device's memory pool (`{in_use, reserved}`), or null where
/// the backend does not report them: what the page shows, and what tests read before and after
/// a cancelled run.
#[wasm_bindgen]
pub async fn memory_usage() -> Result<JsValue, JsValue> {
    let d = device().await?;
    Ok(match d.memory_pool_usage() {
        Some(u) => {
            let o = Object::new();
            set(&o, "in_use", u.bytes_in_use as f64);
            set(&o, "reserved", u.bytes_reserved as f64);
            o.into()
        }
        None => JsValue::NULL,
    })
}
