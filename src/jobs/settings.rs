//! One settings type per job: what a user sets for a generation, a SuppressEOT run, a photo edit
//! and a textual-inversion training run. Each has serde (the page sends a JS object with these
//! field names; absent fields take the defaults), `Default` (the defaults the page shows come
//! from here, see `settings_defaults` in `crate::web`), `validate()`, and natively a clap
//! `Args` derive the CLI flattens (`--negative-prompt` for `negative_prompt`, ...). Errors name
//! the field ([`InputError::Setting`]); the CLI shows it as its flag.

use serde::{Deserialize, Serialize};

use crate::error::InputError;
use crate::pipeline::{GenerateParams, StableDiffusion};
use crate::prediction_type::PredictionType;
use crate::schedulers::{SchedulerKind, TimestepSpacing};
use crate::suppress::{InversionParams, SuppressParams};

/// A text-to-image run (diffusers' `StableDiffusionPipeline.__call__` arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
#[serde(default)]
pub struct GenerateSettings {
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub prompt: String,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value = ""))]
    pub negative_prompt: String,
    /// ddim | pndm | euler | euler-a | dpm++2m | dpm++2m-karras | lms (default: the model's own)
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    #[serde(with = "crate::serde_str::opt")]
    pub scheduler: Option<SchedulerKind>,
    /// leading | trailing | linspace (default: the scheduler's own / the model config's)
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    #[serde(with = "crate::serde_str::opt")]
    pub timestep_spacing: Option<TimestepSpacing>,
    /// epsilon | v_prediction (default: the model config's)
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    #[serde(with = "crate::serde_str::opt")]
    pub prediction_type: Option<PredictionType>,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 50))]
    pub steps: usize,
    /// Classifier-free guidance scale; <= 1 disables guidance (one UNet pass per step).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 7.5))]
    pub guidance: f64,
    /// Seed of the initial noise (default: random, printed).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub seed: Option<u64>,
    /// Image width (multiple of 8; default: the model's native size).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub width: Option<usize>,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub height: Option<usize>,
    /// Number of images (one batched run).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 1))]
    pub num_images: usize,
}

impl Default for GenerateSettings {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            scheduler: None,
            timestep_spacing: None,
            prediction_type: None,
            steps: 50,
            guidance: 7.5,
            seed: None,
            width: None,
            height: None,
            num_images: 1,
        }
    }
}

impl GenerateSettings {
    /// Checks what can be checked without a model (the size is checked against the model's VAE
    /// by [`GenerateParams::validate`]).
    pub fn validate(&self) -> Result<(), InputError> {
        crate::pipeline::denoise::validate_counts(self.steps, self.num_images, self.guidance)
    }

    /// The run's parameters for `sd`: the model's native size where none is set, `random_seed`
    /// where no seed is.
    pub fn params(&self, sd: &StableDiffusion, random_seed: u64) -> Result<GenerateParams, InputError> {
        self.validate()?;
        let size = sd.default_size();
        let mut p = GenerateParams::new(self.prompt.clone(), sd);
        p.negative_prompt = self.negative_prompt.clone();
        p.steps = self.steps;
        p.guidance = self.guidance;
        p.seed = self.seed.unwrap_or(random_seed);
        p.width = self.width.unwrap_or(size);
        p.height = self.height.unwrap_or(size);
        p.num_images = self.num_images;
        p.scheduler = self.scheduler;
        p.overrides.timestep_spacing = self.timestep_spacing;
        p.overrides.prediction_type = self.prediction_type;
        p.validate(sd)?;
        Ok(p)
    }
}

/// SuppressEOT: words of the prompt to remove, and the reference's knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
#[serde(default)]
pub struct SuppressSettings {
    /// Words of the prompt to suppress (SuppressEOT; comma-separated groups).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, value_name = "WORDS"))]
    pub suppress: Option<String>,
    /// SWR strength alpha in s * exp(-alpha * s).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 1.0, requires = "suppress"))]
    pub suppress_alpha: f64,
    /// Fraction of the steps before suppression starts.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 0.2, requires = "suppress"))]
    pub suppress_start: f64,
    /// Fraction of the steps where the embedding optimisation (ITO) ends.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 0.4, requires = "suppress"))]
    pub suppress_opt_end: f64,
    /// ITO iterations per step.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 10, requires = "suppress"))]
    pub suppress_opt_iters: usize,
    /// ITO step scale [default: 20 for generated images, 5 for photo edits].
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, requires = "suppress"))]
    pub suppress_opt_scale: Option<f64>,
    /// SWR only, no ITO (much cheaper).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, requires = "suppress"))]
    pub suppress_opt_off: bool,
    /// ITO gradients by plain autodiff, keeping every activation (about 2x faster than the
    /// default activation checkpointing, about 4.5x more memory for that pass).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, requires = "suppress"))]
    pub suppress_opt_no_checkpoint: bool,
}

impl Default for SuppressSettings {
    fn default() -> Self {
        let d = SuppressParams::new("");
        Self {
            suppress: None,
            suppress_alpha: d.alpha,
            suppress_start: d.start,
            suppress_opt_end: d.opt_end,
            suppress_opt_iters: d.opt_iters,
            suppress_opt_scale: None,
            suppress_opt_off: false,
            suppress_opt_no_checkpoint: false,
        }
    }
}

impl SuppressSettings {
    /// The ITO step scale of generated images (the reference's 20).
    pub const GENERATED_OPT_SCALE: f64 = 20.0;
    /// The ITO step scale of photo edits (the reference's 5).
    pub const PHOTO_OPT_SCALE: f64 = 5.0;

    /// The library parameters when words are given (`None` otherwise), with ITO step scale
    /// `default_scale` unless set; validated.
    pub fn params(&self, default_scale: f64) -> Result<Option<SuppressParams>, InputError> {
        let Some(words) = self.suppress.as_deref().map(str::trim).filter(|w| !w.is_empty()) else { return Ok(None) };
        let p = SuppressParams {
            words: words.to_string(),
            alpha: self.suppress_alpha,
            start: self.suppress_start,
            opt_end: self.suppress_opt_end,
            opt_iters: self.suppress_opt_iters,
            opt_scale: self.suppress_opt_scale.unwrap_or(default_scale),
            optimize: !self.suppress_opt_off,
            checkpoint: !self.suppress_opt_no_checkpoint,
        };
        p.validate()?;
        Ok(Some(p))
    }
}

/// A SuppressEOT edit of a photo: DDIM + null-text inversion with the prompt, then the
/// two-branch run (the photo's file is the front end's business).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
#[serde(default)]
pub struct EditSettings {
    /// A prompt describing the photo, containing the words to suppress.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub prompt: String,
    /// Starting point of null-text inversion (the reference: empty).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value = ""))]
    pub negative_prompt: String,
    /// DDIM steps (inversion and edit).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 50))]
    pub steps: usize,
    /// Square size in pixels the photo is cropped and resized to (a multiple of 8; default: the
    /// model's native size, e.g. 512 for SD 1.5).
    /// (The page sends its generation form's `width`.)
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    #[serde(alias = "width")]
    pub size: Option<usize>,
    /// Classifier-free guidance scale (> 1).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 7.5))]
    pub guidance: f64,
    /// Adam iterations per step of null-text inversion (at most; it stops early when close).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 10))]
    pub null_text_iters: usize,
}

impl Default for EditSettings {
    fn default() -> Self {
        Self { prompt: String::new(), negative_prompt: String::new(), steps: 50, size: None, guidance: 7.5, null_text_iters: InversionParams::default().null_text_iters }
    }
}

impl EditSettings {
    /// The edit's square size for `sd`, checked.
    pub fn size(&self, sd: &StableDiffusion) -> Result<usize, InputError> {
        let size = self.size.unwrap_or_else(|| sd.default_size());
        let f = sd.vae_scale_factor();
        if size == 0 || !size.is_multiple_of(f) {
            return Err(InputError::setting("size", format!("must be a positive multiple of {f} (got {size})")));
        }
        Ok(size)
    }

    /// The run's parameters (DDIM, one image, the photo's size).
    pub fn params(&self, sd: &StableDiffusion) -> Result<GenerateParams, InputError> {
        let size = self.size(sd)?;
        let mut p = GenerateParams::new(self.prompt.clone(), sd);
        p.negative_prompt = self.negative_prompt.clone();
        p.steps = self.steps;
        p.guidance = self.guidance;
        (p.width, p.height) = (size, size);
        p.seed = 0;
        p.scheduler = Some(SchedulerKind::Ddim);
        p.validate(sd)?;
        Ok(p)
    }

    pub fn inversion(&self) -> InversionParams {
        InversionParams { null_text_iters: self.null_text_iters, ..InversionParams::default() }
    }
}

/// Which prompt templates training samples (diffusers' textual-inversion script's
/// `--learnable_property`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Templates {
    /// "a photo of a {}", ... (an object or a person)
    #[default]
    Object,
    /// "a painting in the style of {}", ... (an art style)
    Style,
}

impl Templates {
    pub fn strings(self) -> &'static [&'static str] {
        match self {
            Templates::Object => crate::train::OBJECT_TEMPLATES,
            Templates::Style => crate::train::STYLE_TEMPLATES,
        }
    }
}

/// A textual-inversion training run (diffusers' `textual_inversion.py` arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
#[serde(default)]
pub struct TrainSettings {
    /// The new pseudo-word, e.g. `<my-cat>`.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub token: String,
    /// A single-token word close to the subject ("cat", "person", "sculpture"); the vectors start as its embedding.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub init_word: String,
    /// Vectors per token (more = more capacity, needs more steps).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 1))]
    pub vectors: usize,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, value_enum, default_value_t = Templates::Object))]
    pub templates: Templates,
    /// Optimizer steps (default: 3000; with a replay: the recorded micro-batches / grad-accum).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub steps: Option<u64>,
    /// Learning rate (not scaled by batch or accumulation).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 5e-3))]
    pub lr: f64,
    /// Linear warm-up of the learning rate over this many steps.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 0))]
    pub warmup: usize,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 1e-2))]
    pub weight_decay: f64,
    /// Training resolution in pixels (default: the model's native size).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub resolution: Option<u32>,
    /// Probability of training on the mirrored photo.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 0.5))]
    pub flip_p: f64,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 1))]
    pub batch: usize,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 1))]
    pub grad_accum: usize,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Keep a "last good" checkpoint (the divergence guard's roll-back point; the CLI writes
    /// `OUT_STEM.checkpoint.safetensors`, the page autosaves) every N steps (default: 100).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long = "save-every", value_name = "N"))]
    pub checkpoint_every: Option<u64>,
    /// Keep every UNet activation for backward instead of re-running modules (faster, much more memory).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub no_checkpointing: bool,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            token: String::new(),
            init_word: String::new(),
            vectors: 1,
            templates: Templates::Object,
            steps: None,
            lr: 5e-3,
            warmup: 0,
            weight_decay: 1e-2,
            resolution: None,
            flip_p: 0.5,
            batch: 1,
            grad_accum: 1,
            seed: 0,
            checkpoint_every: None,
            no_checkpointing: false,
        }
    }
}

impl TrainSettings {
    /// Steps when none are given (photos).
    pub const DEFAULT_STEPS: u64 = 3000;
    /// `checkpoint_every` when none is given.
    pub const DEFAULT_CHECKPOINT_EVERY: u64 = 100;

    pub fn validate(&self) -> Result<(), InputError> {
        for (name, v) in [("vectors", self.vectors), ("batch", self.batch), ("grad_accum", self.grad_accum)] {
            if v == 0 {
                return Err(InputError::setting(name, "must be at least 1"));
            }
        }
        if self.steps == Some(0) {
            return Err(InputError::setting("steps", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.flip_p) {
            return Err(InputError::setting("flip_p", format!("must be in [0, 1] (got {})", self.flip_p)));
        }
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Err(InputError::setting("lr", format!("must be a positive number (got {})", self.lr)));
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return Err(InputError::setting("weight_decay", format!("must be >= 0 (got {})", self.weight_decay)));
        }
        if let Some(r) = self.resolution {
            if r == 0 || r % 8 != 0 {
                return Err(InputError::setting("resolution", format!("must be a positive multiple of 8 (got {r})")));
            }
        }
        Ok(())
    }

    /// The training resolution for `sd`.
    pub fn resolution(&self, sd: &StableDiffusion) -> u32 {
        self.resolution.unwrap_or(sd.default_size() as u32)
    }
}

/// Every job's defaults, keyed `generate`, `suppress`, `edit`, `train` (for the page).
pub fn defaults_json() -> serde_json::Value {
    serde_json::json!({
        "generate": GenerateSettings::default(),
        "suppress": SuppressSettings::default(),
        "edit": EditSettings::default(),
        "train": TrainSettings::default(),
        "suppress_opt_scale": { "generated": SuppressSettings::GENERATED_OPT_SCALE, "photo": SuppressSettings::PHOTO_OPT_SCALE },
        "train_steps": TrainSettings::DEFAULT_STEPS,
        "checkpoint_every": TrainSettings::DEFAULT_CHECKPOINT_EVERY,
    })
}
