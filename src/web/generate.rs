//! Text-to-image in the browser, driven step by step from the worker: `start_generation`,
//! then `step_generation` until done (each awaits a tiny readback so progress is real and the
//! worker can cancel between steps), then `finish_generation` for the image and its PNG.

use burn::tensor::{Tensor, TensorData};
use js_sys::{Float32Array, Object, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use super::heatmaps::{Branch, heatmaps_js};
use super::{Session, js_err, set};
use crate::jobs::{EditSettings, GenerateSettings, Generation, SuppressSettings};
use crate::pipeline::Denoise;
use crate::pipeline::png_out::{a1111_sampler, encode_png, to_rgb8};
use crate::readback::read_f32;

/// What the page sends to `start_generation` / `start_edit`: the job's settings (field names
/// of [`GenerateSettings`] / [`EditSettings`] and [`SuppressSettings`], flattened) and whether to
/// capture heatmaps.
#[derive(Deserialize)]
struct JsJob<S> {
    #[serde(flatten)]
    settings: S,
    #[serde(flatten)]
    suppress: SuppressSettings,
    #[serde(default)]
    heatmaps: bool,
}

pub(super) struct Running {
    /// `None` while a step is in flight (no RefCell borrow lives across an await).
    run: Option<Generation>,
}

fn started(job: &Generation) -> JsValue {
    let o = Object::new();
    set(&o, "total_steps", job.num_steps() as f64);
    set(&o, "seed", job.params.seed as f64);
    set(&o, "width", job.params.width as f64);
    set(&o, "height", job.params.height as f64);
    set(&o, "scheduler", a1111_sampler(job.scheduler));
    set(&o, "suppress", job.suppress.as_ref().map(|s| s.words.clone()).unwrap_or_default());
    o.into()
}

#[wasm_bindgen]
impl Session {
    /// Starts a generation. `latents` (optional `Float32Array`, `[1,4,H/8,W/8]` row-major) are
    /// diffusers' initial noise before `init_noise_sigma`; without them the seed draws it.
    /// With `suppress` words, a SuppressEOT run (original and suppressed branch from the same
    /// noise). Returns `{total_steps, seed, width, height, scheduler, suppress}`.
    pub async fn start_generation(&self, params: JsValue, latents: Option<Float32Array>) -> Result<JsValue, JsValue> {
        let sd = self.sd()?;
        let js: JsJob<GenerateSettings> = serde_wasm_bindgen::from_value(params).map_err(js_err)?;
        let latents = match latents {
            Some(a) => {
                let p = js.settings.params(&sd, 0).map_err(js_err)?;
                let shape = p.latent_shape(&sd);
                if a.length() as usize != shape.iter().product::<usize>() {
                    return Err(js_err(format!("latents have {} values; {shape:?} needs {}", a.length(), shape.iter().product::<usize>())));
                }
                Some(Tensor::<4>::from_data(TensorData::new(a.to_vec(), shape), &sd.device()))
            }
            None => None,
        };
        let random_seed = (js_sys::Math::random() * 4_294_967_296.0) as u64;
        let job = Generation::start(&sd, &js.settings, &js.suppress, js.heatmaps, latents, random_seed).await.map_err(js_err)?;
        drop(sd);
        let o = started(&job);
        *self.running.borrow_mut() = Some(Running { run: Some(job) });
        Ok(o)
    }

    /// Starts a SuppressEOT edit of a photo (the CLI's `edit`): the photo (JPEG/PNG/WebP bytes)
    /// is centre-cropped to the model's native size (or `size`), DDIM-inverted with `prompt`
    /// and null-text-inverted (`null_text_iters` Adam iterations per step at most);
    /// `on_progress(done, total)` is called after each inversion step and cancels when it
    /// returns `false`. Then the two-branch run is set up from the inverted latent: drive it
    /// with `step_generation` / `finish_generation` as a generation (`original_image` is the
    /// photo's reconstruction, `image` the edit). Returns what `start_generation` returns.
    pub async fn start_edit(&self, photo: Uint8Array, file_name: String, params: JsValue, on_progress: js_sys::Function) -> Result<JsValue, JsValue> {
        let js: JsJob<EditSettings> = serde_wasm_bindgen::from_value(params).map_err(js_err)?;
        // held across the inversion's awaits: loading tokens meanwhile is refused with "busy"
        let sd = self.sd()?;
        let mut report = |done: usize, total: usize| on_progress.call2(&JsValue::NULL, &(done as f64).into(), &(total as f64).into()).map_or(true, |v| v.as_bool() != Some(false));
        let job = Generation::start_edit(&sd, &photo.to_vec(), &file_name, &js.settings, &js.suppress, js.heatmaps, &mut report).await.map_err(js_err)?;
        drop(sd);
        let o = started(&job);
        *self.running.borrow_mut() = Some(Running { run: Some(job) });
        Ok(o)
    }

    /// Runs one step and waits for the GPU to finish it. Returns `{done, total}`.
    pub async fn step_generation(&self) -> Result<JsValue, JsValue> {
        let mut job = {
            let mut guard = self.running.borrow_mut();
            let r = guard.as_mut().ok_or_else(|| js_err("no generation is running"))?;
            r.run.take().ok_or_else(|| js_err("a step is already running"))?
        };
        // the model stays borrowed during the step (ITO reads maps back): adding tokens
        // meanwhile is refused with "busy"
        let result = {
            let sd = self.sd()?;
            job.step(&sd).await.map_err(js_err)
        };
        let probe = job.latents().slice([0..1, 0..1, 0..1, 0..1]);
        let (done, total) = (job.steps_done(), job.num_steps());
        if let Some(r) = self.running.borrow_mut().as_mut() {
            r.run = Some(job);
        }
        result?;
        // a one-value readback: the step has really run when this resolves
        probe.into_data_async().await.map_err(|e| js_err(format!("GPU error during the step: {e:?}")))?;
        if self.running.borrow().is_none() {
            return Err(js_err("generation cancelled"));
        }
        let o = Object::new();
        set(&o, "done", done as f64);
        set(&o, "total", total as f64);
        Ok(o.into())
    }

    /// Drops the running generation (cancel).
    pub fn cancel_generation(&self) {
        self.running.borrow_mut().take();
    }

    /// Decodes the finished run: `{image: Float32Array [H,W,3] in [0,1], width, height,
    /// png: Uint8Array (with A1111 parameters), parameters, millis}`, plus
    /// `original_image`/`original_png` for suppressed runs and `heatmaps` (see
    /// `heatmaps::heatmaps_js`; branches `image`, or `original` and `suppressed`) when asked for.
    pub async fn finish_generation(&self) -> Result<JsValue, JsValue> {
        let t0 = js_sys::Date::now();
        let sd = self.sd()?;
        let Running { run } = self.running.borrow_mut().take().ok_or_else(|| js_err("no generation is running"))?;
        let job = run.ok_or_else(|| js_err("a step is still running"))?;
        let out = job.finish(&sd).map_err(js_err)?;
        let (prompt_tokens, eos_id) = (sd.prompt.tokenize(&out.params.prompt), sd.prompt.tokenizer.eos_id());
        drop(sd); // no RefCell borrow across the await
        let [_, h, w, _] = out.image.dims();
        let values = read_f32(out.image).await.map_err(js_err)?;
        let original = match out.original {
            Some(t) => Some(read_f32(t).await.map_err(js_err)?),
            None => None,
        };
        let text = out.parameters.to_text();
        let mut png = Vec::new();
        encode_png(&to_rgb8(&values[..h * w * 3]), w, h, &text, &mut png).map_err(js_err)?;
        let o = Object::new();
        set(&o, "image", Float32Array::from(&values[..h * w * 3]));
        set(&o, "width", w as f64);
        set(&o, "height", h as f64);
        set(&o, "png", Uint8Array::from(png.as_slice()));
        set(&o, "parameters", text.clone());
        if let Some(orig) = &original {
            let plain = out.parameters.plain().to_text();
            let mut png = Vec::new();
            encode_png(&to_rgb8(&orig[..h * w * 3]), w, h, &plain, &mut png).map_err(js_err)?;
            set(&o, "original_image", Float32Array::from(&orig[..h * w * 3]));
            set(&o, "original_png", Uint8Array::from(png.as_slice()));
        }
        let branches: Vec<Branch> = out
            .heatmaps
            .iter()
            .filter_map(|(name, maps)| match (*name, &original) {
                (None, _) => Some(Branch { name: "image", maps, image: &values }),
                (Some("original"), Some(orig)) => Some(Branch { name: "original", maps, image: orig }),
                (Some(n), _) if n != "original" => Some(Branch { name: n, maps, image: &values }),
                _ => None,
            })
            .collect();
        if !branches.is_empty() {
            if let Some(hm) = heatmaps_js(&branches, &prompt_tokens, eos_id, w, h).await? {
                set(&o, "heatmaps", hm);
            }
        }
        set(&o, "millis", js_sys::Date::now() - t0);
        Ok(o.into())
    }
}
