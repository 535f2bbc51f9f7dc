//! A generation job as both front ends run it: plain text-to-image or SuppressEOT's two
//! branches, from a prompt or from an inverted photo, with optional heatmaps, driven through
//! [`Denoise`] and finished into images and the PNG's parameters. The CLI runs it to the end
//! ([`crate::pipeline::run_to_end`]); the browser's worker calls `step` and cancels by dropping it.

use burn::tensor::Tensor;

use super::png::png_parameters;
use super::settings::{EditSettings, GenerateSettings, SuppressSettings};
use crate::attention_maps::HeatmapAccumulator;
use crate::error::{Error, InputError};
use crate::photos::{photo_tensor, prepare_photo};
use crate::pipeline::png_out::A1111Parameters;
use crate::pipeline::{Denoise, GenerateParams, StableDiffusion, Txt2Img, decode_latents};
use crate::schedulers::SchedulerKind;
use crate::suppress::{InvertedPhoto, SuppressParams, SuppressTokens, SuppressTxt2Img, invert_photo, locate_words};

enum Run {
    Plain(Txt2Img),
    Suppressed(Box<SuppressTxt2Img>),
}

/// The photo an edit started from.
pub struct EditedPhoto {
    pub name: String,
    pub null_text_iters: usize,
    pub inverted: InvertedPhoto,
}

/// A running generation (see the module docs).
pub struct Generation {
    run: Run,
    pub params: GenerateParams,
    pub scheduler: SchedulerKind,
    pub suppress: Option<SuppressParams>,
    pub edit: Option<EditedPhoto>,
}

/// A finished generation.
pub struct Finished {
    /// `[N, H, W, 3]` in [0, 1]: the result (the suppressed branch with SuppressEOT; the edit).
    pub image: Tensor<4>,
    /// `[N, H, W, 3]`: the original branch of a SuppressEOT run (an edit's reconstruction).
    pub original: Option<Tensor<4>>,
    /// Final latents `[N, C, h, w]` of the result.
    pub latents: Tensor<4>,
    /// Final latents of every branch (`[2N, ...]`: original, suppressed).
    pub all_latents: Tensor<4>,
    pub num_steps: usize,
    /// Heatmaps per branch: `None` for a plain run's only branch, else `original` / `suppressed`.
    pub heatmaps: Vec<(Option<&'static str>, HeatmapAccumulator)>,
    /// Where the suppressed words are in the prompt.
    pub tokens: Option<SuppressTokens>,
    pub edit: Option<EditedPhoto>,
    /// The A1111 `parameters` of the result's PNG.
    pub parameters: A1111Parameters,
    pub params: GenerateParams,
}

impl Generation {
    /// Starts a text-to-image run. `latents`: diffusers' initial noise `[N, C, H/8, W/8]` before
    /// `init_noise_sigma` (`None`: drawn from the seed, `random_seed` when none is set).
    pub async fn start(
        sd: &StableDiffusion,
        settings: &GenerateSettings,
        suppress: &SuppressSettings,
        heatmaps: bool,
        latents: Option<Tensor<4>>,
        random_seed: u64,
    ) -> Result<Self, Error> {
        let p = settings.params(sd, random_seed)?;
        let suppress = suppress.params(SuppressSettings::GENERATED_OPT_SCALE)?;
        let run = match &suppress {
            None => {
                let mut run = Txt2Img::new(sd, &p, latents)?;
                if heatmaps {
                    run.enable_heatmaps(sd)?;
                }
                Run::Plain(run)
            }
            Some(s) => {
                let mut run = SuppressTxt2Img::new(sd, &p, s, latents).await?;
                if heatmaps {
                    run.enable_heatmaps();
                }
                Run::Suppressed(Box::new(run))
            }
        };
        let scheduler = p.scheduler.unwrap_or(sd.default_scheduler);
        Ok(Self { run, params: p, scheduler, suppress, edit: None })
    }

    /// Starts a SuppressEOT edit of a photo (JPEG/PNG/WebP `bytes`): centre-cropped to the edit's
    /// size, DDIM-inverted and null-text-inverted (`on_progress(done, total)` after each step;
    /// `false` cancels); the returned job runs the two-branch edit (`original` is the photo's
    /// reconstruction).
    pub async fn start_edit(
        sd: &StableDiffusion,
        bytes: &[u8],
        name: &str,
        settings: &EditSettings,
        suppress: &SuppressSettings,
        heatmaps: bool,
        on_progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Self, Error> {
        let s = suppress.params(SuppressSettings::PHOTO_OPT_SCALE)?.ok_or(InputError::setting("suppress", "is empty: name the words of the prompt to remove from the photo (e.g. glasses)"))?;
        let p = settings.params(sd)?;
        // the words are checked before the (long) inversion
        locate_words(&sd.prompt.tokenizer, &sd.prompt.tokenize(&p.prompt), &s.words)?;
        let photo = prepare_photo(bytes, name, p.width as u32)?;
        let pixels = photo_tensor(&photo, &sd.device());
        drop(photo);
        let inverted = invert_photo(sd, pixels, &p, &settings.inversion(), on_progress).await?;
        let mut run = SuppressTxt2Img::from_inverted(sd, &p, &s, &inverted).await?;
        if heatmaps {
            run.enable_heatmaps();
        }
        let edit = EditedPhoto { name: name.to_string(), null_text_iters: settings.null_text_iters, inverted };
        Ok(Self { run: Run::Suppressed(Box::new(run)), params: p, scheduler: SchedulerKind::Ddim, suppress: Some(s), edit: Some(edit) })
    }

    /// Decodes the finished run (errors when steps are left).
    pub fn finish(self, sd: &StableDiffusion) -> Result<Finished, Error> {
        if !self.is_done() {
            return Err(InputError::setting("steps", format!("are not all run yet ({} of {})", self.steps_done(), self.num_steps())).into());
        }
        let parameters = png_parameters(sd, &self.params, self.scheduler, self.suppress.as_ref(), self.edit.as_ref());
        let num_steps = self.num_steps();
        let n = self.params.num_images;
        let (image, original, latents, all_latents, heatmaps, tokens) = match self.run {
            Run::Plain(run) => {
                let latents = run.latents();
                let maps = run.heatmaps().map(|m| vec![(None, m.clone())]).unwrap_or_default();
                (decode_latents(sd, latents.clone()), None, latents.clone(), latents, maps, None)
            }
            Run::Suppressed(run) => {
                let all = run.latents();
                let images = decode_latents(sd, all.clone());
                let maps = run.heatmaps().map(|(o, s)| vec![(Some("original"), o.clone()), (Some("suppressed"), s.clone())]).unwrap_or_default();
                (images.clone().narrow(0, n, n), Some(images.narrow(0, 0, n)), all.clone().narrow(0, n, n), all, maps, Some(run.tokens().clone()))
            }
        };
        Ok(Finished { image, original, latents, all_latents, num_steps, heatmaps, tokens, edit: self.edit, parameters, params: self.params })
    }
}

impl Denoise for Generation {
    fn num_steps(&self) -> usize {
        match &self.run {
            Run::Plain(r) => r.num_steps(),
            Run::Suppressed(r) => r.num_steps(),
        }
    }
    fn steps_done(&self) -> usize {
        match &self.run {
            Run::Plain(r) => r.steps_done(),
            Run::Suppressed(r) => r.steps_done(),
        }
    }
    fn latents(&self) -> Tensor<4> {
        match &self.run {
            Run::Plain(r) => r.latents(),
            Run::Suppressed(r) => r.latents(),
        }
    }
    async fn step(&mut self, sd: &StableDiffusion) -> Result<(), Error> {
        match &mut self.run {
            Run::Plain(r) => r.step(sd),
            Run::Suppressed(r) => r.step(sd).await,
        }
    }
}
