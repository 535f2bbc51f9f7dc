//! Port of `StableDiffusionPipeline.__call__` (text to image): prompt + negative prompt encoded
//! once, classifier-free guidance as ONE batched UNet call on `[uncond..., cond...]`, the
//! scheduler loop driven step by step (progress and cancel between steps), VAE decode to
//! `[N, H, W, 3]` in [0, 1] (diffusers' `output_type="np"`).

use burn::tensor::Tensor;

use super::StableDiffusion;
use super::denoise::{Denoise, encode_context, guide, initial_latents, prepare_scheduler, run_to_end};
use super::rng::NoiseRng;
use crate::attention_maps::{HeatmapAccumulator, MapLayers};
use crate::error::{Error, InputError};
use crate::models::UNetCapture;
use crate::schedulers::{Overrides, Scheduler, SchedulerKind};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    /// Classifier-free guidance scale; `<= 1` disables CFG (one UNet pass per step).
    pub guidance: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub num_images: usize,
    /// `None`: the model's own scheduler (`scheduler_config.json`'s `_class_name`).
    pub scheduler: Option<SchedulerKind>,
    pub overrides: Overrides,
}

impl GenerateParams {
    /// diffusers' defaults for `prompt` at the model's native size.
    pub fn new(prompt: impl Into<String>, sd: &StableDiffusion) -> Self {
        let size = sd.default_size();
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            steps: 50,
            guidance: 7.5,
            seed: 0,
            width: size,
            height: size,
            num_images: 1,
            scheduler: None,
            overrides: Overrides::default(),
        }
    }

    pub fn do_cfg(&self) -> bool {
        self.guidance > 1.0
    }
}

/// A text-to-image run, advanced one scheduler step at a time.
pub struct Txt2Img {
    scheduler: Box<dyn Scheduler>,
    latents: Tensor<4>,
    /// `[2N or N, 77, D]`: `[uncond x N, cond x N]` with CFG.
    context: Tensor<3>,
    guidance: f64,
    do_cfg: bool,
    step: usize,
    rng: NoiseRng,
    /// Per-token attention heatmaps, when enabled.
    heatmaps: Option<HeatmapAccumulator>,
}

impl Txt2Img {
    /// Prepares a run. `latents`: diffusers' `latents=` argument, `[N, C, H/8, W/8]` initial noise
    /// before `init_noise_sigma` scaling; `None` draws it from the seeded [`NoiseRng`].
    pub fn new(sd: &StableDiffusion, p: &GenerateParams, latents: Option<Tensor<4>>) -> Result<Self, Error> {
        let scheduler = prepare_scheduler(sd, p)?;
        let context = encode_context(sd, p)?;
        let mut rng = NoiseRng::new(p.seed);
        let latents = initial_latents(sd, p, latents, &mut rng)? * scheduler.init_noise_sigma();
        Ok(Self { scheduler, latents, context, guidance: p.guidance, do_cfg: p.do_cfg(), step: 0, rng, heatmaps: None })
    }

    pub fn scheduler(&self) -> &dyn Scheduler {
        self.scheduler.as_ref()
    }

    /// From the next step on, accumulates per-token cross-attention heatmaps of the prompt
    /// (conditional half of the batch; see [`crate::attention_maps::heatmaps`]). Errors when the UNet
    /// has no cross-attention in its down/up blocks.
    pub fn enable_heatmaps(&mut self, sd: &StableDiffusion) -> Result<(), Error> {
        let [_, _, h, w] = self.latents.dims();
        let layers = MapLayers::for_unet(&sd.unet, [h, w]).ok_or(InputError::NoCrossAttention { what: "attention heatmaps" })?;
        self.heatmaps = Some(HeatmapAccumulator::new(layers));
        Ok(())
    }

    /// The heatmaps accumulated so far (`None` unless [`Self::enable_heatmaps`] was called).
    pub fn heatmaps(&self) -> Option<&HeatmapAccumulator> {
        self.heatmaps.as_ref()
    }

    /// The UNet's noise prediction for the current step, guidance applied.
    fn noise_pred(&mut self, sd: &StableDiffusion, t: f64) -> Tensor<4> {
        let input = if self.do_cfg { Tensor::cat(vec![self.latents.clone(), self.latents.clone()], 0) } else { self.latents.clone() };
        let input = self.scheduler.scale_model_input(input, self.step);
        let mut capture = self.heatmaps.as_ref().map_or_else(UNetCapture::none, HeatmapAccumulator::capture);
        let eps = sd.unet.forward(input, &[t], self.context.clone(), &mut capture);
        if let Some(acc) = &mut self.heatmaps {
            let n = self.latents.dims()[0];
            let rows = if self.do_cfg { n..2 * n } else { 0..n };
            acc.add(&capture, rows);
        }
        if self.do_cfg { guide(eps, self.guidance) } else { eps }
    }

    /// Runs one scheduler step (expand for CFG, scale, UNet, guidance, scheduler step).
    pub fn step(&mut self, sd: &StableDiffusion) -> Result<(), Error> {
        if self.is_done() {
            return Err(InputError::Finished.into());
        }
        let t = self.scheduler.timesteps()[self.step];
        let eps = self.noise_pred(sd, t);
        let noise = self.scheduler.needs_noise().then(|| self.rng.randn(self.latents.dims(), &sd.device()));
        self.latents = self.scheduler.step(eps, self.step, self.latents.clone(), noise).prev_sample;
        self.step += 1;
        Ok(())
    }
}

/// Decodes latents to images `[N, H, W, 3]` in [0, 1]:
/// `clamp(vae.decode(latents / scaling_factor + shift) / 2 + 0.5, 0, 1)`, NCHW -> NHWC.
pub fn decode_latents(sd: &StableDiffusion, latents: Tensor<4>) -> Tensor<4> {
    let z = latents / sd.vae.scaling_factor + sd.vae.shift_factor;
    let image = sd.vae.decode(z);
    (image / 2.0 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 1])
}

/// Result of [`generate`].
pub struct Generated {
    /// `[N, H, W, 3]` in [0, 1].
    pub image: Tensor<4>,
    /// Final latents `[N, C, h, w]`.
    pub latents: Tensor<4>,
    pub num_steps: usize,
}

/// Runs a whole generation. `on_step(done, total, latents)` is called after each step; returning
/// `false` cancels (the result is then `Err(Error::Cancelled)`).
pub fn generate(
    sd: &StableDiffusion,
    p: &GenerateParams,
    latents: Option<Tensor<4>>,
    on_step: &mut dyn FnMut(usize, usize, &Tensor<4>) -> bool,
) -> Result<Generated, Error> {
    let mut run = Txt2Img::new(sd, p, latents)?;
    // plain generation never waits on a readback: the future completes at once
    now_or_never(run_to_end(&mut run, sd, on_step))?;
    let latents = run.latents();
    Ok(Generated { image: decode_latents(sd, latents.clone()), latents, num_steps: run.num_steps() })
}

/// The value of a future that never waits (plain generation steps), polled once without an executor.
fn now_or_never<T>(f: impl std::future::Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("plain generation does not wait"),
    }
}

/// Latents `[N, C, h, w]`.
impl Denoise for Txt2Img {
    fn num_steps(&self) -> usize {
        self.scheduler.timesteps().len()
    }
    fn steps_done(&self) -> usize {
        self.step
    }
    fn latents(&self) -> Tensor<4> {
        self.latents.clone()
    }
    fn step(&mut self, sd: &StableDiffusion) -> impl std::future::Future<Output = Result<(), Error>> {
        std::future::ready(Txt2Img::step(self, sd))
    }
}
