//! Text-to-image in the browser, driven step by step from the worker: `start_generation`,
//! then `step_generation` until done (each awaits a tiny readback so progress is real and the
//! worker can cancel between steps), then `finish_generation` for the image and its PNG.

use burn::tensor::{Tensor, TensorData};
use js_sys::{Float32Array, Object, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use super::heatmaps::{Branch, heatmaps_js};
use super::{Session, js_err, set};
use crate::pipeline::png_out::{A1111Parameters, a1111_sampler, encode_png, to_rgb8};
use crate::pipeline::{GenerateParams, Txt2Img, decode_latents};
use crate::schedulers::{PredictionType, SchedulerKind, TimestepSpacing};
use crate::suppress::{InversionParams, SuppressParams, SuppressTxt2Img, invert_photo, locate_words, photo_tensor};
use crate::train::photos::prepare_photo;

/// Parameters from JS (`{prompt, negative_prompt, scheduler, steps, guidance, seed, width,
/// height, timestep_spacing, prediction_type}`); absent fields take the CLI's defaults.
#[derive(Deserialize)]
struct JsParams {
    prompt: String,
    #[serde(default)]
    negative_prompt: String,
    scheduler: Option<String>,
    steps: Option<usize>,
    guidance: Option<f64>,
    seed: Option<f64>,
    width: Option<usize>,
    height: Option<usize>,
    timestep_spacing: Option<String>,
    prediction_type: Option<String>,
    /// SuppressEOT: words of the prompt to suppress (empty: plain generation).
    #[serde(default)]
    suppress: String,
    suppress_alpha: Option<f64>,
    suppress_start: Option<f64>,
    suppress_opt_end: Option<f64>,
    suppress_opt_iters: Option<usize>,
    suppress_opt_scale: Option<f64>,
    #[serde(default)]
    suppress_opt_off: bool,
    /// Accumulate per-token attention heatmaps (returned by `finish_generation`).
    #[serde(default)]
    heatmaps: bool,
}

impl JsParams {
    /// The generation parameters (absent fields: the CLI's defaults; no seed: a random one).
    fn generate_params(&self, sd: &crate::pipeline::StableDiffusion) -> Result<GenerateParams, JsValue> {
        let mut p = GenerateParams::new(self.prompt.clone(), sd);
        p.negative_prompt = self.negative_prompt.clone();
        if let Some(s) = self.steps {
            p.steps = s;
        }
        if let Some(g) = self.guidance {
            p.guidance = g;
        }
        p.seed = self.seed.map_or_else(|| (js_sys::Math::random() * 4_294_967_296.0) as u64, |s| s as u64);
        p.width = self.width.unwrap_or(p.width);
        p.height = self.height.unwrap_or(p.height);
        let opt = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        p.scheduler = opt(&self.scheduler).map(|s| s.parse::<SchedulerKind>()).transpose().map_err(js_err)?;
        p.overrides.timestep_spacing = opt(&self.timestep_spacing).map(|s| s.parse::<TimestepSpacing>()).transpose().map_err(js_err)?;
        p.overrides.prediction_type = opt(&self.prediction_type).map(|s| s.parse::<PredictionType>()).transpose().map_err(js_err)?;
        Ok(p)
    }

    /// The suppression settings (`None` without words); absent fields take the defaults of
    /// generated images or, with `real_image`, of photo edits (ITO step scale 5 instead of 20).
    fn suppress_params(&self, real_image: bool) -> Option<SuppressParams> {
        let words = self.suppress.trim();
        (!words.is_empty()).then(|| {
            let d = if real_image { SuppressParams::for_real_image(words) } else { SuppressParams::new(words) };
            SuppressParams {
                alpha: self.suppress_alpha.unwrap_or(d.alpha),
                start: self.suppress_start.unwrap_or(d.start),
                opt_end: self.suppress_opt_end.unwrap_or(d.opt_end),
                opt_iters: self.suppress_opt_iters.unwrap_or(d.opt_iters),
                opt_scale: self.suppress_opt_scale.unwrap_or(d.opt_scale),
                optimize: !self.suppress_opt_off,
                ..d
            }
        })
    }
}

enum Job {
    Plain(Txt2Img),
    Suppressed(Box<SuppressTxt2Img>),
}

impl Job {
    fn num_steps(&self) -> usize {
        match self {
            Job::Plain(r) => r.num_steps(),
            Job::Suppressed(r) => r.num_steps(),
        }
    }
    fn steps_done(&self) -> usize {
        match self {
            Job::Plain(r) => r.steps_done(),
            Job::Suppressed(r) => r.steps_done(),
        }
    }
    fn is_done(&self) -> bool {
        match self {
            Job::Plain(r) => r.is_done(),
            Job::Suppressed(r) => r.is_done(),
        }
    }
    fn latents(&self) -> Tensor<4> {
        match self {
            Job::Plain(r) => r.latents(),
            Job::Suppressed(r) => r.latents(),
        }
    }
}

pub(super) struct Running {
    /// `None` while a step is in flight (no RefCell borrow lives across an await).
    run: Option<Job>,
    params: GenerateParams,
    kind: SchedulerKind,
    suppress: Option<SuppressParams>,
}

#[wasm_bindgen]
impl Session {
    /// Starts a generation. `latents` (optional `Float32Array`, `[1,4,H/8,W/8]` row-major) are
    /// diffusers' initial noise before `init_noise_sigma`; without them the seed draws it.
    /// With `suppress` words, a SuppressEOT run (original and suppressed branch from the same
    /// noise). Returns `{total_steps, seed, width, height, scheduler, suppress}`.
    pub async fn start_generation(&self, params: JsValue, latents: Option<Float32Array>) -> Result<JsValue, JsValue> {
        let sd = self.sd()?;
        let js: JsParams = serde_wasm_bindgen::from_value(params).map_err(js_err)?;
        let p = js.generate_params(&sd)?;
        let f = sd.vae_scale_factor();
        let latents = match latents {
            Some(a) => {
                let shape = [1, sd.latent_channels(), p.height / f, p.width / f];
                if a.length() as usize != shape.iter().product::<usize>() {
                    return Err(js_err(format!("latents have {} values; {shape:?} needs {}", a.length(), shape.iter().product::<usize>())));
                }
                Some(Tensor::<4>::from_data(TensorData::new(a.to_vec(), shape), &sd.device()))
            }
            None => None,
        };
        let suppress = js.suppress_params(false);
        let run = match &suppress {
            None => {
                let mut run = Txt2Img::new(&sd, &p, latents).map_err(js_err)?;
                if js.heatmaps {
                    run.enable_heatmaps(&sd).map_err(js_err)?;
                }
                Job::Plain(run)
            }
            Some(sp) => {
                let mut run = SuppressTxt2Img::new(&sd, &p, sp, latents).await.map_err(js_err)?;
                if js.heatmaps {
                    run.enable_heatmaps();
                }
                Job::Suppressed(Box::new(run))
            }
        };
        let kind = p.scheduler.unwrap_or(sd.default_scheduler);
        let o = Object::new();
        set(&o, "total_steps", run.num_steps() as f64);
        set(&o, "seed", p.seed as f64);
        set(&o, "width", p.width as f64);
        set(&o, "height", p.height as f64);
        set(&o, "scheduler", a1111_sampler(kind));
        set(&o, "suppress", suppress.as_ref().map(|s| s.words.clone()).unwrap_or_default());
        drop(sd);
        *self.running.borrow_mut() = Some(Running { run: Some(run), params: p, kind, suppress });
        Ok(o.into())
    }

    /// Starts a SuppressEOT edit of a photo (the CLI's `edit`): the photo (JPEG/PNG/WebP bytes)
    /// is centre-cropped to the model's native size (or `width`), DDIM-inverted with `prompt`
    /// and null-text-inverted (`null_text_iters` Adam iterations per step at most, default 10);
    /// `on_progress(done, total)` is called after each inversion step and cancels when it
    /// returns `false`. Then the two-branch run is set up from the inverted latent: drive it
    /// with `step_generation` / `finish_generation` as a generation (`original_image` is the
    /// photo's reconstruction, `image` the edit). Returns what `start_generation` returns.
    pub async fn start_edit(&self, photo: Uint8Array, file_name: String, params: JsValue, on_progress: js_sys::Function) -> Result<JsValue, JsValue> {
        #[derive(Deserialize)]
        struct EditExtra {
            null_text_iters: Option<usize>,
        }
        let extra: EditExtra = serde_wasm_bindgen::from_value(params.clone()).map_err(js_err)?;
        let js: JsParams = serde_wasm_bindgen::from_value(params).map_err(js_err)?;
        // held across the inversion's awaits: loading tokens meanwhile is refused with "busy"
        let sd = self.sd()?;
        let mut p = js.generate_params(&sd)?;
        let size = js.width.or(js.height).unwrap_or_else(|| sd.default_size());
        (p.width, p.height) = (size, size);
        p.scheduler = Some(SchedulerKind::Ddim);
        let sp = js.suppress_params(true).ok_or_else(|| js_err("name the words of the prompt to remove from the photo (e.g. glasses)"))?;
        // check the words before the (long) inversion
        locate_words(&sd.prompt.tokenizer, &sd.prompt.tokenize(&p.prompt), &sp.words).map_err(js_err)?;
        let prepared = prepare_photo(&photo.to_vec(), &file_name, size as u32).map_err(js_err)?;
        let pixels = photo_tensor(&prepared, &sd.device());
        drop(prepared);
        let inv = InversionParams { null_text_iters: extra.null_text_iters.unwrap_or(InversionParams::default().null_text_iters), ..InversionParams::default() };
        let mut report = |done: usize, total: usize| on_progress.call2(&JsValue::NULL, &(done as f64).into(), &(total as f64).into()).map_or(true, |v| v.as_bool() != Some(false));
        let inverted = invert_photo(&sd, pixels, &p, &inv, &mut report).await.map_err(js_err)?;
        let mut run = SuppressTxt2Img::from_inverted(&sd, &p, &sp, &inverted).await.map_err(js_err)?;
        if js.heatmaps {
            run.enable_heatmaps();
        }
        let o = Object::new();
        set(&o, "total_steps", run.num_steps() as f64);
        set(&o, "seed", p.seed as f64);
        set(&o, "width", p.width as f64);
        set(&o, "height", p.height as f64);
        set(&o, "scheduler", a1111_sampler(SchedulerKind::Ddim));
        set(&o, "suppress", sp.words.clone());
        drop(sd);
        *self.running.borrow_mut() = Some(Running { run: Some(Job::Suppressed(Box::new(run))), params: p, kind: SchedulerKind::Ddim, suppress: Some(sp) });
        Ok(o.into())
    }

    /// Runs one step and waits for the GPU to finish it. Returns `{done, total}`.
    pub async fn step_generation(&self) -> Result<JsValue, JsValue> {
        let mut job = {
            let mut guard = self.running.borrow_mut();
            let r = guard.as_mut().ok_or_else(|| js_err("no generation is running"))?;
            r.run.take().ok_or_else(|| js_err("a step is already running"))?
        };
        let result = match &mut job {
            Job::Plain(run) => {
                let sd = self.sd()?;
                run.step(&sd).map_err(js_err)
            }
            Job::Suppressed(run) => {
                // the model stays borrowed during the step (ITO reads maps back): adding tokens
                // meanwhile is refused with "busy"
                let sd = self.sd()?;
                run.step(&sd).await.map_err(js_err)
            }
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
        let Running { run, params, kind, suppress } = self.running.borrow_mut().take().ok_or_else(|| js_err("no generation is running"))?;
        let run = run.ok_or_else(|| js_err("a step is still running"))?;
        if !run.is_done() {
            return Err(js_err("the generation has steps left"));
        }
        // suppressed runs: latents are [original, suppressed]; the result is the suppressed image
        let images = decode_latents(&sd, run.latents());
        let (image, original) = if suppress.is_some() {
            (images.clone().narrow(0, 1, 1), Some(images.narrow(0, 0, 1)))
        } else {
            (images, None)
        };
        let model_name = sd.name.clone();
        let (prompt_tokens, eos_id) = (sd.prompt.tokenize(&params.prompt), sd.prompt.tokenizer.eos_id());
        drop(sd); // no RefCell borrow across the await
        let [_, h, w, _] = image.dims();
        let data = image.into_data_async().await.map_err(|e| js_err(format!("readback failed: {e:?}")))?;
        let values: Vec<f32> = data.convert::<f32>().try_into_vec::<f32>().map_err(|e| js_err(format!("{e:?}")))?;
        let original = match original {
            Some(t) => {
                let d = t.into_data_async().await.map_err(|e| js_err(format!("readback failed: {e:?}")))?;
                Some(d.convert::<f32>().try_into_vec::<f32>().map_err(|e| js_err(format!("{e:?}")))?)
            }
            None => None,
        };
        let text = A1111Parameters {
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            steps: params.steps,
            sampler: a1111_sampler(kind).into(),
            cfg_scale: params.guidance,
            seed: params.seed,
            width: w,
            height: h,
            model: model_name,
            extra: suppress
                .as_ref()
                .map(|sp| vec![("SuppressEOT".to_string(), format!("\"{}\" alpha {} ITO {}", sp.words, sp.alpha, if sp.optimize { "on" } else { "off" }))])
                .unwrap_or_default(),
        }
        .to_text();
        let mut png = Vec::new();
        encode_png(&to_rgb8(&values[..h * w * 3]), w, h, &text, &mut png).map_err(js_err)?;
        let o = Object::new();
        set(&o, "image", Float32Array::from(&values[..h * w * 3]));
        set(&o, "width", w as f64);
        set(&o, "height", h as f64);
        set(&o, "png", Uint8Array::from(png.as_slice()));
        set(&o, "parameters", text.clone());
        if let Some(orig) = &original {
            let mut png = Vec::new();
            encode_png(&to_rgb8(&orig[..h * w * 3]), w, h, &text, &mut png).map_err(js_err)?;
            set(&o, "original_image", Float32Array::from(&orig[..h * w * 3]));
            set(&o, "original_png", Uint8Array::from(png.as_slice()));
        }
        let branches: Vec<Branch> = match (&run, &original) {
            (Job::Plain(r), _) => r.heatmaps().map(|m| Branch { name: "image", maps: m, image: &values }).into_iter().collect(),
            (Job::Suppressed(r), Some(orig)) => r
                .heatmaps()
                .map(|(mo, ms)| vec![Branch { name: "original", maps: mo, image: orig }, Branch { name: "suppressed", maps: ms, image: &values }])
                .unwrap_or_default(),
            (Job::Suppressed(_), None) => vec![],
        };
        if !branches.is_empty() {
            if let Some(hm) = heatmaps_js(&branches, &prompt_tokens, eos_id, w, h).await? {
                set(&o, "heatmaps", hm);
            }
        }
        set(&o, "millis", js_sys::Date::now() - t0);
        Ok(o.into())
    }
}
