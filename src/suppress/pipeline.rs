//! Two-branch SuppressEOT generation (the reference's `text2image_ldm_stable` loop for generated
//! images): batch `[original x N, suppressed x N]` from the same start noise. Before step
//! `floor(start * S)` both branches use the prompt embedding `c`; from then on the suppressed
//! branch uses `e = SWR(c)` (recomputed from `c` each step), and for steps in
//! `[floor(start * S), floor(opt_end * S))` `e` is first optimised by ITO (`opt_iters`
//! iterations of step `opt_scale * sqrt(linspace(1, 0.1, S)[i])`). Classifier-free guidance
//! with the negative prompt for both branches; uncond and cond of both branches are ONE batched
//! UNet call per step (the reference ran them separately). Any [`Scheduler`] works; ancestral
//! schedulers get the same noise in both branches, so the original branch is exactly what
//! [`crate::pipeline::Txt2Img`] produces for the same seed. Before SWR starts the branches are
//! identical, so those steps run the UNet for one branch only.

use burn::tensor::Tensor;

use super::SuppressError;
use super::ito::{ItoTarget, ito_step_scale};
use super::swr::{SuppressTokens, locate_words, soft_weighted_regularization};
use crate::attention_maps::{HeatmapAccumulator, MapLayers};
use crate::error::{Error, InputError};
use crate::models::UNetCapture;
use crate::pipeline::denoise::{Denoise, guide, initial_latents, prepare_scheduler};
use crate::pipeline::rng::NoiseRng;
use crate::pipeline::{GenerateParams, StableDiffusion};
use crate::schedulers::Scheduler;

/// SuppressEOT settings; defaults are the reference's for generated images.
#[derive(Clone, Debug, PartialEq)]
pub struct SuppressParams {
    /// Words of the prompt to suppress; comma-separated groups (see [`locate_words`]).
    pub words: String,
    /// SWR strength `alpha` in `s * exp(-alpha * s)` (1.0).
    pub alpha: f64,
    /// Fraction of the steps before SWR starts (`cross_retain_steps`, 0.2).
    pub start: f64,
    /// Fraction of the steps where ITO ends (`max_step_to_erase / steps`, 0.4).
    pub opt_end: f64,
    /// ITO iterations per step (`iter_each_step`, 10).
    pub opt_iters: usize,
    /// ITO step scale (20 for generated images, 5 for real photos).
    pub opt_scale: f64,
    /// Run ITO (false: SWR only).
    pub optimize: bool,
    /// ITO gradients with activation checkpointing (true: ~4.5x less memory for pass B, ~2x
    /// its time; see [`ItoTarget::checkpoint`]).
    pub checkpoint: bool,
}

impl SuppressParams {
    /// The reference's defaults for suppressing `words`.
    pub fn new(words: impl Into<String>) -> Self {
        Self { words: words.into(), alpha: 1.0, start: 0.2, opt_end: 0.4, opt_iters: 10, opt_scale: 20.0, optimize: true, checkpoint: true }
    }

    /// The reference's defaults for a real photo: ITO step scale 5 instead of 20.
    pub fn for_real_image(words: impl Into<String>) -> Self {
        Self { opt_scale: 5.0, ..Self::new(words) }
    }

    /// Checks the settings (named by their field names, see [`InputError::Setting`]).
    pub fn validate(&self) -> Result<(), InputError> {
        if !self.alpha.is_finite() || self.alpha < 0.0 {
            return Err(InputError::setting("suppress_alpha", format!("must be a finite number >= 0 (got {})", self.alpha)));
        }
        for (name, v) in [("suppress_start", self.start), ("suppress_opt_end", self.opt_end)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(InputError::setting(name, format!("is a fraction of the steps in [0, 1] (got {v})")));
            }
        }
        if !self.opt_scale.is_finite() {
            return Err(InputError::setting("suppress_opt_scale", format!("must be finite (got {})", self.opt_scale)));
        }
        Ok(())
    }

    /// First step (of `num_steps`) that uses SWR: `floor(start * num_steps)`.
    pub fn swr_start(&self, num_steps: usize) -> usize {
        (self.start * num_steps as f64 + 1e-9).floor() as usize
    }

    /// Steps that run ITO: `[floor(start * S), floor(opt_end * S))` (empty when off).
    pub fn ito_steps(&self, num_steps: usize) -> std::ops::Range<usize> {
        let end = if self.optimize { (self.opt_end * num_steps as f64 + 1e-9).floor() as usize } else { 0 };
        let start = self.swr_start(num_steps);
        start..end.max(start)
    }
}

/// A SuppressEOT run, advanced one scheduler step at a time (like [`crate::pipeline::Txt2Img`];
/// `step` is async because ITO steps read pass A's maps back for the masks).
///
/// Load the model on a plain device (as the CLI and the browser do) or mark it `no_grad`: ITO
/// differentiates with respect to the embedding only, on `device.autodiff()`.
pub struct SuppressTxt2Img {
    scheduler: Box<dyn Scheduler>,
    /// `[2N, C, h, w]`: original x N, suppressed x N.
    latents: Tensor<4>,
    /// `[N, 77, D]` negative-prompt embedding (CFG only).
    uncond: Option<Tensor<3>>,
    /// `[N, 77, D]` prompt embedding `c`.
    cond: Tensor<3>,
    /// `[N, 77, D]` `SWR(c)`.
    swr: Tensor<3>,
    tokens: SuppressTokens,
    layers: MapLayers,
    params: SuppressParams,
    guidance: f64,
    num_images: usize,
    step: usize,
    rng: NoiseRng,
    last_embedding: Tensor<3>,
    last_losses: Vec<Tensor<1>>,
    /// Heatmaps of the original and the suppressed branch, when enabled.
    heatmaps: Option<[HeatmapAccumulator; 2]>,
    /// `[N, 77, D]` per step, replacing `uncond` (null-text inversion of a real photo).
    uncond_steps: Vec<Tensor<3>>,
}

impl SuppressTxt2Img {
    /// Prepares a run: encodes prompt and negative prompt, locates the words to suppress
    /// (typed error when absent), computes `SWR(c)`, draws (or takes) the start noise.
    /// `latents`: `[N, C, H/8, W/8]` before `init_noise_sigma` scaling, used for both branches.
    pub async fn new(sd: &StableDiffusion, p: &GenerateParams, s: &SuppressParams, latents: Option<Tensor<4>>) -> Result<Self, Error> {
        s.validate()?;
        let scheduler = prepare_scheduler(sd, p)?;
        let n = p.num_images;
        let do_cfg = p.do_cfg();
        let (toks, out) = sd.prompt.encode(&[&p.negative_prompt, &p.prompt], false)?;
        let tokens = locate_words(&sd.prompt.tokenizer, &toks[1], &s.words)?;
        let [_, seq, d] = out.last_hidden_state.dims();
        let uncond = do_cfg.then(|| out.last_hidden_state.clone().slice([0..1, 0..seq, 0..d]).repeat_dim(0, n));
        let c1 = out.last_hidden_state.slice([1..2, 0..seq, 0..d]);
        let swr = soft_weighted_regularization(c1.clone(), &tokens, s.alpha).await?.repeat_dim(0, n);
        let cond = c1.repeat_dim(0, n);

        let [_, _, h, w] = p.latent_shape(sd);
        let layers = MapLayers::for_unet(&sd.unet, [h, w]).ok_or(InputError::NoCrossAttention { what: "SuppressEOT" })?;
        let mut rng = NoiseRng::new(p.seed);
        let latents = initial_latents(sd, p, latents, &mut rng)?;
        let latents = Tensor::cat(vec![latents.clone(), latents], 0) * scheduler.init_noise_sigma();
        Ok(Self {
            scheduler,
            latents,
            uncond,
            last_embedding: cond.clone(),
            cond,
            swr,
            tokens,
            layers,
            params: s.clone(),
            guidance: p.guidance,
            num_images: n,
            step: 0,
            rng,
            last_losses: Vec::new(),
            heatmaps: None,
            uncond_steps: Vec::new(),
        })
    }

    /// Where the suppressed words are in the prompt.
    pub fn tokens(&self) -> &SuppressTokens {
        &self.tokens
    }

    /// The attention layers and map size ITO uses.
    pub fn layers(&self) -> &MapLayers {
        &self.layers
    }

    /// `[N, 77, D]`: `SWR(c)`.
    pub fn swr_embedding(&self) -> Tensor<3> {
        self.swr.clone()
    }

    /// `[N, 77, D]`: the suppressed branch's embedding used at the last step (after ITO there).
    pub fn last_embedding(&self) -> Tensor<3> {
        self.last_embedding.clone()
    }

    /// ITO losses (`[1]` device tensors, before each update) of the last step; empty when the
    /// last step ran no ITO.
    pub fn last_losses(&self) -> &[Tensor<1>] {
        &self.last_losses
    }

    /// Uses one unconditional embedding per step instead of the negative prompt's (null-text
    /// inversion's optimised embeddings, `[N, 77, D]` each, for both branches). Needs
    /// classifier-free guidance and exactly [`Self::num_steps`] embeddings.
    pub fn set_uncond_per_step(&mut self, uncond: Vec<Tensor<3>>) -> Result<(), Error> {
        let Some(u) = &self.uncond else {
            return Err(SuppressError::UncondNeedsGuidance.into());
        };
        if uncond.len() != self.num_steps() {
            return Err(SuppressError::UncondSteps { given: uncond.len(), steps: self.num_steps() }.into());
        }
        if let Some(bad) = uncond.iter().find(|t| t.dims() != u.dims()) {
            return Err(SuppressError::UncondShape { expected: u.dims().to_vec(), actual: bad.dims().to_vec() }.into());
        }
        self.uncond_steps = uncond;
        Ok(())
    }

    /// From the next step on, accumulates per-token cross-attention heatmaps of both branches
    /// (all heads, the layers of [`Self::layers`]; see [`crate::attention_maps::heatmaps`]). Before suppression
    /// starts the branches share one UNet pass, so they get the same maps there.
    pub fn enable_heatmaps(&mut self) {
        self.heatmaps = Some([HeatmapAccumulator::new(self.layers.clone()), HeatmapAccumulator::new(self.layers.clone())]);
    }

    /// `(original, suppressed)` heatmaps accumulated so far (`None` unless enabled).
    pub fn heatmaps(&self) -> Option<(&HeatmapAccumulator, &HeatmapAccumulator)> {
        self.heatmaps.as_ref().map(|[o, s]| (o, s))
    }

    /// The scheduler driving both branches.
    pub fn scheduler(&self) -> &dyn Scheduler {
        self.scheduler.as_ref()
    }

    /// Continues a run from saved latents `[2N, C, h, w]` (original x N, suppressed x N) taken
    /// after `steps_done` steps of a run with the same parameters. ITO restarts from SWR(c) at
    /// every step, so the latents are the whole state, unless the scheduler keeps a history of
    /// model outputs (PNDM, DPM-Solver++, LMS) or draws noise (Euler ancestral): those are
    /// refused.
    pub fn resume_at(&mut self, steps_done: usize, latents: Tensor<4>) -> Result<(), Error> {
        if self.scheduler.keeps_history() || self.scheduler.needs_noise() {
            return Err(SuppressError::CannotResume { scheduler: self.scheduler.name().to_string() }.into());
        }
        if steps_done > self.num_steps() {
            return Err(SuppressError::ResumeStep { done: steps_done, total: self.num_steps() }.into());
        }
        if latents.dims() != self.latents.dims() {
            return Err(InputError::LatentShape { expected: self.latents.dims().to_vec(), actual: latents.dims().to_vec() }.into());
        }
        self.latents = latents;
        self.step = steps_done;
        Ok(())
    }

    /// Runs one step: the suppressed branch's embedding (c, SWR(c), or ITO from SWR(c)), then one
    /// batched UNet call for both branches (and CFG), guidance, scheduler step.
    pub async fn step(&mut self, sd: &StableDiffusion) -> Result<(), Error> {
        if self.is_done() {
            return Err(InputError::Finished.into());
        }
        let (i, total, n) = (self.step, self.num_steps(), self.num_images);
        let t = self.scheduler.timesteps()[i];
        let input = self.scheduler.scale_model_input(self.latents.clone(), i);
        self.last_losses.clear();
        let e = if i < self.params.swr_start(total) {
            self.cond.clone()
        } else if self.params.ito_steps(total).contains(&i) && self.params.opt_iters > 0 {
            let x_orig = input.clone().narrow(0, 0, n);
            let x_supp = input.clone().narrow(0, n, n);
            let mut target = ItoTarget::new(&sd.unet, &self.layers, &self.tokens, x_orig, t, self.cond.clone()).await?;
            target.checkpoint = self.params.checkpoint;
            let scale = ito_step_scale(self.params.opt_scale, i, total);
            let (e, losses) = target.optimize(&sd.unet, x_supp, t, self.swr.clone(), scale, self.params.opt_iters);
            self.last_losses = losses;
            e
        } else {
            self.swr.clone()
        };
        self.last_embedding = e.clone();
        // Before SWR starts both branches have the same latents and embedding: one branch's
        // prediction serves both.
        let shared = i < self.params.swr_start(total);
        let (input, cond) = if shared { (input.narrow(0, 0, n), self.cond.clone()) } else { (input, Tensor::cat(vec![self.cond.clone(), e], 0)) };
        let mut capture = self.heatmaps.as_ref().map_or_else(UNetCapture::none, |[o, _]| o.capture());
        // batch rows of the conditional passes: [original, suppressed] (one shared block before SWR)
        let cond_start = if self.uncond.is_some() { input.dims()[0] } else { 0 };
        let step_uncond = self.uncond_steps.get(i).cloned().or_else(|| self.uncond.clone());
        let eps = match &step_uncond {
            Some(u) => {
                let uncond = if shared { u.clone() } else { Tensor::cat(vec![u.clone(), u.clone()], 0) };
                let ctx = Tensor::cat(vec![uncond, cond], 0);
                guide(sd.unet.forward(Tensor::cat(vec![input.clone(), input], 0), &[t], ctx, &mut capture), self.guidance)
            }
            None => sd.unet.forward(input, &[t], cond, &mut capture),
        };
        if let Some([o, s]) = &mut self.heatmaps {
            let supp = if shared { cond_start } else { cond_start + n };
            o.add(&capture, cond_start..cond_start + n);
            s.add(&capture, supp..supp + n);
        }
        let eps = if shared { Tensor::cat(vec![eps.clone(), eps], 0) } else { eps };
        let noise = self.scheduler.needs_noise().then(|| {
            let [_, c, h, w] = self.latents.dims();
            let z = self.rng.randn([n, c, h, w], &sd.device());
            Tensor::cat(vec![z.clone(), z], 0)
        });
        self.latents = self.scheduler.step(eps, i, self.latents.clone(), noise).prev_sample;
        self.step += 1;
        Ok(())
    }
}

/// Latents `[2N, C, h, w]`: original x N, then suppressed x N.
impl Denoise for SuppressTxt2Img {
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
        SuppressTxt2Img::step(self, sd)
    }
}
