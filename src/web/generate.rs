//! Text-to-image in the browser, driven step by step from the worker: `start_generation`,
//! then `step_generation` until done (each awaits a tiny readback so progress is real and the
//! worker can cancel between steps), then `finish_generation` for the image and its PNG.

use burn::tensor::{Tensor, TensorData};
use js_sys::{Float32Array, Object, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use super::{Session, js_err, set};
use crate::pipeline::png_out::{A1111Parameters, a1111_sampler, encode_png, to_rgb8};
use crate::pipeline::{GenerateParams, Txt2Img, decode_latents};
use crate::schedulers::{PredictionType, SchedulerKind, TimestepSpacing};

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
}

pub(super) struct Running {
    run: Txt2Img,
    params: GenerateParams,
    kind: SchedulerKind,
}

#[wasm_bindgen]
impl Session {
    /// Starts a generation. `latents` (optional `Float32Array`, `[1,4,H/8,W/8]` row-major) are
    /// diffusers' initial noise before `init_noise_sigma`; without them the seed draws it.
    /// Returns `{total_steps, seed, width, height, scheduler}`.
    pub fn start_generation(&self, params: JsValue, latents: Option<Float32Array>) -> Result<JsValue, JsValue> {
        let sd = self.sd()?;
        let js: JsParams = serde_wasm_bindgen::from_value(params).map_err(js_err)?;
        let mut p = GenerateParams::new(js.prompt, &sd);
        p.negative_prompt = js.negative_prompt;
        if let Some(s) = js.steps {
            p.steps = s;
        }
        if let Some(g) = js.guidance {
            p.guidance = g;
        }
        p.seed = js.seed.map_or_else(|| (js_sys::Math::random() * 4_294_967_296.0) as u64, |s| s as u64);
        p.width = js.width.unwrap_or(p.width);
        p.height = js.height.unwrap_or(p.height);
        p.scheduler = js.scheduler.filter(|s| !s.is_empty()).map(|s| s.parse::<SchedulerKind>()).transpose().map_err(js_err)?;
        p.overrides.timestep_spacing = js.timestep_spacing.filter(|s| !s.is_empty()).map(|s| s.parse::<TimestepSpacing>()).transpose().map_err(js_err)?;
        p.overrides.prediction_type = js.prediction_type.filter(|s| !s.is_empty()).map(|s| s.parse::<PredictionType>()).transpose().map_err(js_err)?;
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
        let run = Txt2Img::new(&sd, &p, latents).map_err(js_err)?;
        let kind = p.scheduler.unwrap_or(sd.default_scheduler);
        let o = Object::new();
        set(&o, "total_steps", run.num_steps() as f64);
        set(&o, "seed", p.seed as f64);
        set(&o, "width", p.width as f64);
        set(&o, "height", p.height as f64);
        set(&o, "scheduler", a1111_sampler(kind));
        *self.running.borrow_mut() = Some(Running { run, params: p, kind });
        Ok(o.into())
    }

    /// Runs one step and waits for the GPU to finish it. Returns `{done, total}`.
    pub async fn step_generation(&self) -> Result<JsValue, JsValue> {
        let sd = self.sd()?;
        let probe = {
            let mut guard = self.running.borrow_mut();
            let r = guard.as_mut().ok_or_else(|| js_err("no generation is running"))?;
            r.run.step(&sd).map_err(js_err)?;
            r.run.latents().slice([0..1, 0..1, 0..1, 0..1])
        };
        drop(sd); // no RefCell borrow across the await
        // a one-value readback: the step has really run when this resolves
        probe.into_data_async().await.map_err(|e| js_err(format!("GPU error during the step: {e:?}")))?;
        let guard = self.running.borrow();
        let r = guard.as_ref().ok_or_else(|| js_err("generation cancelled"))?;
        let o = Object::new();
        set(&o, "done", r.run.steps_done() as f64);
        set(&o, "total", r.run.num_steps() as f64);
        Ok(o.into())
    }

    /// Drops the running generation (cancel).
    pub fn cancel_generation(&self) {
        self.running.borrow_mut().take();
    }

    /// Decodes the finished run: `{image: Float32Array [H,W,3] in [0,1], width, height,
    /// png: Uint8Array (with A1111 parameters), parameters, millis}`.
    pub async fn finish_generation(&self) -> Result<JsValue, JsValue> {
        let t0 = js_sys::Date::now();
        let sd = self.sd()?;
        let Running { run, params, kind } = self.running.borrow_mut().take().ok_or_else(|| js_err("no generation is running"))?;
        if !run.is_done() {
            return Err(js_err("the generation has steps left"));
        }
        let image = decode_latents(&sd, run.latents());
        let model_name = sd.name.clone();
        drop(sd); // no RefCell borrow across the await
        let [_, h, w, _] = image.dims();
        let data = image.into_data_async().await.map_err(|e| js_err(format!("readback failed: {e:?}")))?;
        let values: Vec<f32> = data.convert::<f32>().try_into_vec::<f32>().map_err(|e| js_err(format!("{e:?}")))?;
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
            extra: vec![],
        }
        .to_text();
        let mut png = Vec::new();
        encode_png(&to_rgb8(&values[..h * w * 3]), w, h, &text, &mut png).map_err(js_err)?;
        let o = Object::new();
        set(&o, "image", Float32Array::from(&values[..h * w * 3]));
        set(&o, "width", w as f64);
        set(&o, "height", h as f64);
        set(&o, "png", Uint8Array::from(png.as_slice()));
        set(&o, "parameters", text);
        set(&o, "millis", js_sys::Date::now() - t0);
        Ok(o.into())
    }
}
