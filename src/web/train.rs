//! Textual-inversion training in the browser, driven step by step from the worker:
//! `check_photo` (validate an upload at once), `start_training` (photos -> latent cache, or a
//! checkpoint to resume), `train_step` until done (the worker autosaves `training_checkpoint()`
//! to IndexedDB), `export_embedding` in every format, `finish_training` (the token becomes usable
//! in prompts). `import_embedding` adds an embedding file to the session.
//!
//! The trainer works on a clone of the loaded model (device tensors are shared, not copied).

use js_sys::{Array, Object, Uint8Array};
use wasm_bindgen::prelude::*;

use super::{Session, js_err, set};
use crate::embedding_files::{A1111Meta, EmbeddingFormat, read_embedding, read_embedding_with_meta, write_embedding};
use crate::jobs::{StartedTraining, TrainData, TrainSettings, start_training, training_preview};
use crate::pipeline::png_out::{encode_png, to_rgb8};
use crate::readback::read_f32;
use crate::train::{Checkpoint, TrainingRun, prepare_photo};

pub(super) struct Training {
    /// `None` while a step is in flight (taken out so no borrow lives across an await).
    run: Option<TrainingRun>,
    params: TrainSettings,
    steps: u64,
    model_name: String,
    resolution: u32,
    /// First template filled with the placeholder string: the preview prompt.
    preview_prompt: String,
}

fn to_js<T: serde::Serialize>(v: &T) -> Result<JsValue, JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
}

#[wasm_bindgen]
impl Session {
    /// Decodes and checks one uploaded photo (EXIF orientation applied). Returns `{name, width,
    /// height}` or throws a message saying what is wrong with the file.
    pub fn check_photo(&self, bytes: &[u8], name: &str) -> Result<JsValue, JsValue> {
        let p = prepare_photo(bytes, name, 64).map_err(js_err)?;
        let o = Object::new();
        set(&o, "name", name);
        set(&o, "width", p.original_size.0 as f64);
        set(&o, "height", p.original_size.1 as f64);
        Ok(o.into())
    }

    /// Starts (or, with `checkpoint` bytes, resumes) training on `photos` (`Uint8Array`s with
    /// `names`). Returns `{steps, step, tokens, resolution, photos}`.
    pub async fn start_training(&self, params: JsValue, photos: Array, names: Array, checkpoint: Option<Uint8Array>) -> Result<JsValue, JsValue> {
        let p: TrainSettings = serde_wasm_bindgen::from_value(params).map_err(js_err)?;
        p.validate().map_err(js_err)?;
        let ck = checkpoint.map(|c| Checkpoint::from_bytes(&c.to_vec(), "autosave")).transpose().map_err(js_err)?;
        let sd = self.sd()?.clone();
        let resolution = p.resolution(&sd);
        let mut prepared = Vec::new();
        for (i, bytes) in photos.iter().enumerate() {
            let name = names.get(i as u32).as_string().unwrap_or_else(|| format!("photo {}", i + 1));
            let bytes = bytes.dyn_into::<Uint8Array>().map_err(|_| js_err(format!("{name}: not a byte array")))?.to_vec();
            prepared.push(prepare_photo(&bytes, &name, resolution).map_err(js_err)?);
        }
        let n_photos = prepared.len();
        let model_name = sd.name.clone();
        let StartedTraining { run, steps, preview_prompt } = start_training(sd, &p, TrainData::Photos(prepared), ck, serde_json::Value::Null).await.map_err(js_err)?;
        let o = Object::new();
        set(&o, "steps", steps as f64);
        set(&o, "step", run.step_count() as f64);
        set(&o, "tokens", run.trainer.placeholder_tokens().iter().map(|t| JsValue::from_str(t)).collect::<Array>());
        set(&o, "resolution", resolution as f64);
        set(&o, "photos", n_photos as f64);
        *self.training.borrow_mut() = Some(Training { run: Some(run), params: p, steps, model_name, resolution, preview_prompt });
        Ok(o.into())
    }

    /// One optimizer step. Returns the step log `{step, loss, lr, grad_norm, row_norms,
    /// timesteps, micro_losses, rollback?, done, steps}`.
    pub async fn train_step(&self) -> Result<JsValue, JsValue> {
        let mut run = {
            let mut t = self.training.borrow_mut();
            let t = t.as_mut().ok_or_else(|| js_err("no training is running"))?;
            t.run.take().ok_or_else(|| js_err("a training step is already running"))?
        };
        let result = run.step().await;
        let steps = {
            let mut t = self.training.borrow_mut();
            let t = t.as_mut().ok_or_else(|| js_err("training was cancelled"))?;
            let steps = t.steps;
            t.run = Some(run);
            steps
        };
        let log = result.map_err(js_err)?;
        let v = to_js(&log)?;
        let o: Object = v.dyn_into().map_err(|_| js_err("step log"))?;
        set(&o, "done", log.step >= steps);
        set(&o, "steps", steps as f64);
        Ok(o.into())
    }

    /// A preview of the current embedding: the first template with the token, `steps` denoising
    /// steps at the training resolution, fixed `seed`. Returns PNG bytes (A1111 parameters).
    pub async fn training_preview(&self, steps: usize, seed: f64) -> Result<Uint8Array, JsValue> {
        let (image, params) = {
            let mut t = self.training.borrow_mut();
            let t = t.as_mut().ok_or_else(|| js_err("no training is running"))?;
            let (prompt, size) = (t.preview_prompt.clone(), t.resolution as usize);
            let run = t.run.as_mut().ok_or_else(|| js_err("a training step is running"))?;
            training_preview(run, &prompt, size, steps, seed as u64).map_err(js_err)?
        };
        let [_, h, w, _] = image.dims();
        let values = read_f32(image).await.map_err(js_err)?;
        let mut png = Vec::new();
        encode_png(&to_rgb8(&values[..h * w * 3]), w, h, &params.to_text(), &mut png).map_err(js_err)?;
        Ok(Uint8Array::from(png.as_slice()))
    }

    /// The current training state as checkpoint bytes (for autosave), or the last good one when
    /// `last_good` is true.
    pub fn training_checkpoint(&self, last_good: bool) -> Result<Uint8Array, JsValue> {
        let t = self.training.borrow();
        let run = t.as_ref().and_then(|t| t.run.as_ref()).ok_or_else(|| js_err("no training state"))?;
        let ck = if last_good { run.last_good().clone() } else { run.checkpoint() };
        Ok(Uint8Array::from(ck.to_bytes().as_slice()))
    }

    /// The learned embedding as a file: `format` = diffusers | a1111 | a1111-pt | a1111-png.
    pub fn export_embedding(&self, format: &str) -> Result<Uint8Array, JsValue> {
        let format: EmbeddingFormat = format.parse().map_err(js_err)?;
        let t = self.training.borrow();
        let t = t.as_ref().ok_or_else(|| js_err("nothing has been trained in this session"))?;
        let run = t.run.as_ref().ok_or_else(|| js_err("a training step is running; try again"))?;
        let meta = A1111Meta {
            name: Some(t.params.token.clone()),
            step: Some(run.step_count() as i64),
            sd_checkpoint: None,
            sd_checkpoint_name: Some(t.model_name.clone()),
        };
        Ok(Uint8Array::from(write_embedding(&run.trainer.learned_embedding(), format, &meta).as_slice()))
    }

    /// Ends training and makes the learned token usable in prompts of this session. Returns
    /// `{tokens, step}`.
    pub fn finish_training(&self) -> Result<JsValue, JsValue> {
        let t = self.training.borrow_mut().take().ok_or_else(|| js_err("no training is running"))?;
        let run = t.run.ok_or_else(|| js_err("a training step is running"))?;
        let emb = run.trainer.learned_embedding();
        let mut enc = self.encoder_mut()?;
        enc.add_embedding("trained embedding", &emb).map_err(js_err)?;
        let o = Object::new();
        set(&o, "tokens", emb.tokens().iter().map(|t| JsValue::from_str(t)).collect::<Array>());
        set(&o, "step", run.step_count() as f64);
        Ok(o.into())
    }

    /// Stops training without keeping anything (the autosave in the browser stays).
    pub fn cancel_training(&self) {
        self.training.borrow_mut().take();
    }

    /// Adds an embedding file (diffusers / A1111, any supported format; pickles are read without
    /// executing anything) to this session. `token` overrides the file's. Returns `{token,
    /// tokens, vectors, dim}`.
    pub fn import_embedding(&self, bytes: &[u8], name: &str, token: Option<String>) -> Result<JsValue, JsValue> {
        let emb = read_embedding(bytes, name, token.as_deref().filter(|t| !t.is_empty())).map_err(js_err)?;
        let mut enc = self.encoder_mut()?;
        enc.add_embedding(name, &emb).map_err(js_err)?;
        let o = Object::new();
        set(&o, "token", emb.token.as_str());
        set(&o, "tokens", emb.tokens().iter().map(|t| JsValue::from_str(t)).collect::<Array>());
        set(&o, "vectors", emb.n as f64);
        set(&o, "dim", emb.dim as f64);
        Ok(o.into())
    }

    /// Whether an embedding `token` of `vectors` rows could be added: `{token, id}` of the first
    /// of `token`, `token_1`, ... the loaded tokenizer already knows (a vocabulary word or an
    /// added token, which `import_embedding` would refuse), or null when all are free.
    pub fn token_clash(&self, token: &str, vectors: u32) -> JsValue {
        let enc = self.encoder();
        for i in 0..vectors.max(1) {
            let t = if i == 0 { token.to_string() } else { format!("{token}_{i}") };
            if let Some(id) = enc.tokenizer.token_to_id(&t) {
                let o = Object::new();
                set(&o, "token", t.as_str());
                set(&o, "id", id as f64);
                return o.into();
            }
        }
        JsValue::NULL
    }
}

/// Reads an embedding file without a model (for the browser's embedding library): `{token,
/// tokens, vectors, dim, format}`, or throws what is wrong with the file. `token` overrides the
/// file's.
#[wasm_bindgen]
pub fn inspect_embedding(bytes: &[u8], name: &str, token: Option<String>) -> Result<JsValue, JsValue> {
    let l = read_embedding_with_meta(bytes, name, token.as_deref().filter(|t| !t.is_empty())).map_err(js_err)?;
    let emb = &l.embedding;
    let o = Object::new();
    set(&o, "token", emb.token.as_str());
    set(&o, "tokens", emb.tokens().iter().map(|t| JsValue::from_str(t)).collect::<Array>());
    set(&o, "vectors", emb.n as f64);
    set(&o, "dim", emb.dim as f64);
    set(&o, "format", format!("{:?}", l.source));
    Ok(o.into())
}

/// Rewrites an embedding file in `format` (diffusers | a1111 | a1111-pt | a1111-png) under
/// `token` (the file's own token when empty), keeping the file's A1111 fields.
#[wasm_bindgen]
pub fn convert_embedding(bytes: &[u8], name: &str, token: Option<String>, format: &str) -> Result<Uint8Array, JsValue> {
    let format: EmbeddingFormat = format.parse().map_err(js_err)?;
    let l = read_embedding_with_meta(bytes, name, token.as_deref().filter(|t| !t.is_empty())).map_err(js_err)?;
    let meta = A1111Meta { name: Some(l.embedding.token.clone()), ..l.meta };
    Ok(Uint8Array::from(write_embedding(&l.embedding, format, &meta).as_slice()))
}
