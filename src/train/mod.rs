//! Textual inversion (Gal et al. 2022) with the semantics of diffusers'
//! `examples/textual_inversion/textual_inversion.py`: new placeholder tokens `<tok>`,
//! `<tok>_1`, ... whose token-embedding rows (initialised from a one-token initializer word)
//! are the only trainable parameters; everything else is frozen.
//!
//! A step (see [`TextualInversionTrainer::step`]): `noisy = sqrt(acp[t]) x + sqrt(1-acp[t]) n`
//! (DDPM, `alphas_cumprod` of the model's scheduler config), `ehs = text_encoder(ids)` with the
//! placeholder rows substituted, `pred = unet(noisy, t, ehs)`, `loss = mean((pred - target)^2)`
//! with `target` = noise (`epsilon`) or velocity (`v_prediction`), backward to the rows only,
//! the row gradient read back asynchronously, AdamW on the host ([`adamw`]).
//!
//! No synchronous readback happens here: every device read is `into_data_async().await`, so the
//! same code runs in the browser (WebGPU) and natively.

pub mod adamw;
pub mod checkpoint;
pub mod data;
pub mod session;
pub mod step;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use adamw::{AdamW, AdamWConfig, AdamWState, LrSchedule};
pub use checkpoint::{CHECKPOINT_FORMAT, Checkpoint, CheckpointInfo};
pub use data::{CachedLatent, LatentCache, SampleInfo, SamplerConfig, sample_batch};
pub use crate::photos::{PhotoError, PreparedPhoto, prepare_photo};
pub use session::{DataSource, ReplayData, Rollback, RunConfig, StepLog, TrainingRun};
pub use step::{Batch, diffusion_loss, diffusion_loss_checkpointed, text_encoder_from_embeddings, token_embeddings};

use crate::embedding_files::TextualInversion;
pub use crate::error::TrainError;
use crate::pipeline::StableDiffusion;
use crate::readback::read_f32;
use crate::schedulers::{Overrides, PredictionType, create};



/// Optimisation settings. Defaults: the paper's / AUTOMATIC1111's lr 5e-3, AdamW (0.9, 0.999,
/// eps 1e-8, weight decay 1e-2), no accumulation, constant lr.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The (already scaled, if wanted) base learning rate.
    pub learning_rate: f64,
    pub adamw: AdamWConfig,
    /// Micro-batches per optimizer update (accelerate semantics: each micro-batch's loss is
    /// divided by this before backward, gradients are summed).
    pub gradient_accumulation_steps: usize,
    pub lr_schedule: LrSchedule,
    /// Re-run the UNet module by module during backward instead of keeping every activation
    /// (see [`crate::models::UNetTape`]): peak memory of one module instead of the whole
    /// network, for about one extra UNet forward per step. Same gradients.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-3,
            adamw: AdamWConfig::default(),
            gradient_accumulation_steps: 1,
            lr_schedule: LrSchedule::Constant,
            gradient_checkpointing: false,
        }
    }
}

impl TrainConfig {
    /// diffusers' `--scale_lr`: `lr * gradient_accumulation_steps * batch_size` (one process).
    pub fn scaled_lr(base: f64, batch_size: usize, gradient_accumulation_steps: usize) -> f64 {
        base * (batch_size * gradient_accumulation_steps) as f64
    }
}

/// What one call of [`TextualInversionTrainer::step`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// MSE loss of this micro-batch (not divided by the accumulation steps, as the script logs it).
    pub loss: f32,
    /// Gradient `[n, D]` (row-major) of this micro-batch's loss divided by the accumulation
    /// steps, i.e. what was added to the accumulated gradient (= d loss / d rows without
    /// accumulation).
    pub grad: Vec<f32>,
    /// Whether this call ended an accumulation cycle and updated the rows.
    pub updated: bool,
    /// Optimizer updates done so far (after this call).
    pub optimizer_steps: u64,
    /// Learning rate of the update (`None` when no update happened).
    pub lr: Option<f64>,
}

/// Everything needed to resume training exactly (rows, AdamW moments, accumulation progress).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub placeholder_tokens: Vec<String>,
    pub n_vectors: usize,
    pub dim: usize,
    /// `[n, D]` row-major.
    pub rows: Vec<f32>,
    pub optimizer: AdamWState,
    /// Gradient summed over the micro-batches of the unfinished accumulation cycle.
    pub accumulated_grad: Vec<f32>,
    pub accumulated_micro_steps: usize,
}

impl TrainerState {
    /// A state with no rows (a placeholder before the first real checkpoint).
    pub fn empty() -> Self {
        Self {
            placeholder_tokens: Vec::new(),
            n_vectors: 0,
            dim: 0,
            rows: Vec::new(),
            optimizer: AdamWState::new(0),
            accumulated_grad: Vec::new(),
            accumulated_micro_steps: 0,
        }
    }
}

/// Textual-inversion training state on top of a loaded (frozen) Stable Diffusion model.
///
/// The model may be loaded on a plain device (recommended: its weights then enter the autodiff
/// graph as constants and nothing is wrapped) or on an autodiff device (its parameters are set
/// to `no_grad`). The trainable rows live on `device.autodiff()` and are re-uploaded from the
/// host copy every step.
pub struct TextualInversionTrainer {
    sd: StableDiffusion,
    placeholder_tokens: Vec<String>,
    placeholder_ids: Vec<u32>,
    initializer_id: u32,
    dim: usize,
    /// `[n, D]` row-major, the trained rows (f32 like torch's parameter).
    rows: Vec<f32>,
    config: TrainConfig,
    optimizer: AdamW,
    alphas_cumprod: Vec<f64>,
    prediction_type: PredictionType,
    grad_device: Device,
    accumulated_grad: Vec<f32>,
    accumulated_micro_steps: usize,
}

impl TextualInversionTrainer {
    /// Adds the placeholder tokens `placeholder`, `placeholder_1`, ... (`n_vectors` of them) to
    /// the tokenizer, appends their rows (copies of the initializer word's row) to the text
    /// encoder, freezes the model and sets up AdamW.
    ///
    /// Fails with [`TrainError::InitializerNotOneToken`] when `init_word` is not exactly one
    /// token, [`TrainError::Tokenizer`] when a placeholder token already exists.
    pub async fn new(sd: StableDiffusion, placeholder: &str, init_word: &str, n_vectors: usize, config: TrainConfig) -> Result<Self, TrainError> {
        let mut sd = sd;
        if n_vectors == 0 {
            return Err(TrainError::NoVectors(n_vectors));
        }
        if placeholder.is_empty() || placeholder.chars().any(char::is_whitespace) {
            return Err(TrainError::BadPlaceholder(placeholder.into()));
        }
        let tok = &sd.prompt.tokenizer;
        let te = &sd.prompt.text_encoder;
        if tok.len() != te.num_tokens() {
            return Err(TrainError::InconsistentModel { tokenizer: tok.len(), encoder: te.num_tokens() });
        }
        // diffusers: tokenizer.encode(initializer_token, add_special_tokens=False) must be one id
        let init = tok.tokenize(init_word);
        if init.ids.len() != 1 {
            return Err(TrainError::InitializerNotOneToken { word: init_word.into(), tokens: init.tokens });
        }
        let initializer_id = init.ids[0];
        // scheduler tables and prediction type before changing anything
        let scheduler = create(sd.default_scheduler, &sd.scheduler_config, &Overrides::default())?;
        let alphas_cumprod = scheduler.alphas_cumprod().to_vec();
        let prediction_type = scheduler.config().prediction_type;
        if prediction_type == PredictionType::Sample {
            return Err(TrainError::UnsupportedPrediction(prediction_type.as_str().into()));
        }

        let placeholder_tokens: Vec<String> =
            (0..n_vectors).map(|i| if i == 0 { placeholder.to_string() } else { format!("{placeholder}_{i}") }).collect();
        let refs: Vec<&str> = placeholder_tokens.iter().map(String::as_str).collect();
        let placeholder_ids = sd.prompt.tokenizer.add_tokens(&refs)?;

        // rows := initializer row (on the device, then one async read for the host copy)
        let te = &sd.prompt.text_encoder;
        let dim = te.hidden_size();
        let id = initializer_id as usize;
        let init_row = te.text_model.embeddings.token_embedding.weight.val().slice([id..id + 1, 0..dim]);
        let init_rows = init_row.clone().repeat_dim(0, n_vectors);
        sd.prompt.text_encoder.add_token_rows(init_rows.detach());
        let row = read_f32(init_row).await?;
        let rows: Vec<f32> = (0..n_vectors).flat_map(|_| row.iter().copied()).collect();

        // frozen: nothing of the model requires gradients
        sd.unet = sd.unet.no_grad();
        sd.vae = sd.vae.no_grad();
        sd.prompt.text_encoder = sd.prompt.text_encoder.no_grad();
        let grad_device = sd.device().autodiff();
        let len = rows.len();
        Ok(Self {
            sd,
            placeholder_tokens,
            placeholder_ids,
            initializer_id,
            dim,
            rows,
            config,
            optimizer: AdamW::new(config.adamw, len),
            alphas_cumprod,
            prediction_type,
            grad_device,
            accumulated_grad: vec![0.0; len],
            accumulated_micro_steps: 0,
        })
    }

    /// The model (tokenizer with the placeholder tokens, text encoder with rows for them; those
    /// rows hold the initial values until [`Self::write_rows_to_text_encoder`]).
    pub fn model(&self) -> &StableDiffusion {
        &self.sd
    }

    /// Writes the current rows into the text encoder's token-embedding matrix (for generating
    /// with the learned concept) and returns the model.
    pub fn into_model(mut self) -> StableDiffusion {
        self.write_rows_to_text_encoder();
        self.sd
    }

    /// Writes the current rows into the text encoder's token-embedding matrix.
    pub fn write_rows_to_text_encoder(&mut self) {
        let te = &mut self.sd.prompt.text_encoder;
        let device = te.device();
        let n = self.placeholder_ids.len();
        let w = te.text_model.embeddings.token_embedding.weight.val();
        let mut w = w;
        for (r, &id) in self.placeholder_ids.iter().enumerate() {
            let row = Tensor::<2>::from_data(TensorData::new(self.rows[r * self.dim..(r + 1) * self.dim].to_vec(), [1, self.dim]), &device);
            let id = id as usize;
            let row = if row.dtype() == w.dtype() { row } else { row.cast(w.dtype()) };
            w = w.slice_assign([id..id + 1, 0..self.dim], row);
        }
        debug_assert_eq!(n, self.placeholder_tokens.len());
        te.text_model.embeddings.token_embedding.weight = burn::module::Param::from_tensor(w).set_require_grad(false);
    }

    /// Placeholder token strings (`<tok>`, `<tok>_1`, ...).
    pub fn placeholder_tokens(&self) -> &[String] {
        &self.placeholder_tokens
    }

    /// Their ids in the tokenizer / rows in the text encoder.
    pub fn placeholder_ids(&self) -> &[u32] {
        &self.placeholder_ids
    }

    /// The initializer word's token id.
    pub fn initializer_id(&self) -> u32 {
        self.initializer_id
    }

    /// `" ".join(placeholder_tokens)`: what replaces `{}` in a template.
    pub fn placeholder_string(&self) -> String {
        self.placeholder_tokens.join(" ")
    }

    /// Token ids (`model_max_length`, padded/truncated like the training script's
    /// `tokenizer(..., padding="max_length", truncation=True)`) of `template` with `{}` replaced
    /// by [`Self::placeholder_string`].
    pub fn prompt_ids(&self, template: &str) -> Vec<u32> {
        let text = template.replace("{}", &self.placeholder_string());
        self.sd.prompt.tokenizer.encode_padded(&text).ids
    }

    /// Number of vectors `n`.
    pub fn n_vectors(&self) -> usize {
        self.placeholder_ids.len()
    }

    /// Width `D` of the rows.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The trained rows `[n, D]`, row-major.
    pub fn rows(&self) -> &[f32] {
        &self.rows
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// `alphas_cumprod` of the model's scheduler config (`num_train_timesteps` values).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// `num_train_timesteps`: timesteps are drawn from `[0, this)`.
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// The training target in use.
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// AdamW state (for checkpoints).
    pub fn optimizer_state(&self) -> &AdamWState {
        &self.optimizer.state
    }

    /// Optimizer updates done so far.
    pub fn optimizer_steps(&self) -> u64 {
        self.optimizer.state.step
    }

    /// The learned embedding in the form the embedding-file writers/readers use.
    pub fn learned_embedding(&self) -> TextualInversion {
        TextualInversion { token: self.placeholder_tokens[0].clone(), vectors: self.rows.clone(), n: self.n_vectors(), dim: self.dim }
    }

    /// Everything needed to resume exactly.
    pub fn state(&self) -> TrainerState {
        TrainerState {
            placeholder_tokens: self.placeholder_tokens.clone(),
            n_vectors: self.n_vectors(),
            dim: self.dim,
            rows: self.rows.clone(),
            optimizer: self.optimizer.state.clone(),
            accumulated_grad: self.accumulated_grad.clone(),
            accumulated_micro_steps: self.accumulated_micro_steps,
        }
    }

    /// Restores a [`TrainerState`] saved from a trainer with the same placeholder tokens and width.
    pub fn restore(&mut self, state: TrainerState) -> Result<(), TrainError> {
        let len = self.rows.len();
        if state.placeholder_tokens != self.placeholder_tokens || state.dim != self.dim || state.n_vectors != self.n_vectors() {
            return Err(TrainError::State(format!(
                "it is for {:?} x {} but this trainer has {:?} x {}",
                state.placeholder_tokens, state.dim, self.placeholder_tokens, self.dim
            )));
        }
        if state.rows.len() != len
            || state.optimizer.exp_avg.len() != len
            || state.optimizer.exp_avg_sq.len() != len
            || state.accumulated_grad.len() != len
        {
            return Err(TrainError::State(format!("vectors must have {len} values")));
        }
        self.rows = state.rows;
        self.optimizer.state = state.optimizer;
        self.accumulated_grad = state.accumulated_grad;
        self.accumulated_micro_steps = state.accumulated_micro_steps;
        Ok(())
    }

    /// Sets the base learning rate of later updates (the schedule still applies on top).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.config.learning_rate = lr;
    }

    /// Replaces the rows (e.g. to start from a saved embedding); `rows` is `[n, D]` row-major.
    pub fn set_rows(&mut self, rows: Vec<f32>) -> Result<(), TrainError> {
        if rows.len() != self.rows.len() {
            return Err(TrainError::State(format!("{} values given, {} x {} needed", rows.len(), self.n_vectors(), self.dim)));
        }
        self.rows = rows;
        Ok(())
    }

    /// Checks a batch's shapes, timesteps and ids against the model.
    pub fn check_batch(&self, batch: &Batch) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Batch(m));
        let [b, c, h, w] = batch.latents.dims();
        if b == 0 {
            return bad("empty batch".into());
        }
        if batch.noise.dims() != [b, c, h, w] {
            return bad(format!("noise has shape {:?} but latents {:?}", batch.noise.dims(), [b, c, h, w]));
        }
        if c != self.sd.unet.in_channels() {
            return bad(format!("latents have {c} channels but the UNet takes {}", self.sd.unet.in_channels()));
        }
        if batch.timesteps.len() != b {
            return bad(format!("{} timesteps for a batch of {b}", batch.timesteps.len()));
        }
        if let Some(t) = batch.timesteps.iter().find(|&&t| t >= self.alphas_cumprod.len()) {
            return bad(format!("timestep {t} is outside [0, {})", self.alphas_cumprod.len()));
        }
        let s = self.sd.prompt.tokenizer.model_max_length();
        if batch.input_ids.len() != b || batch.input_ids.iter().any(|r| r.len() != s) {
            return bad(format!("input_ids must be {b} rows of {s} ids"));
        }
        let vocab = self.sd.prompt.text_encoder.num_tokens() as u32;
        if let Some(id) = batch.input_ids.iter().flatten().find(|&&i| i >= vocab) {
            return bad(format!("token id {id} is outside the vocabulary ({vocab})"));
        }
        Ok(())
    }

    /// Forward + backward with the current rows; `scale` multiplies the loss before backward.
    /// Returns (unscaled loss, gradient of the scaled loss `[n, D]`), with one readback.
    async fn forward_backward(&self, batch: &Batch, scale: f64) -> Result<(f32, Vec<f32>), TrainError> {
        self.check_batch(batch)?;
        let n = self.n_vectors();
        let rows =
            Tensor::<2>::from_data(TensorData::new(self.rows.clone(), [n, self.dim]), &self.grad_device).require_grad();
        let te = &self.sd.prompt.text_encoder;
        let (loss, grads) = if self.config.gradient_checkpointing {
            let (loss, ehs, g_ehs) =
                step::diffusion_loss_checkpointed(te, &self.sd.unet, &self.alphas_cumprod, self.prediction_type, &self.placeholder_ids, rows.clone(), batch, scale);
            (loss, (ehs * g_ehs.autodiff()).sum().backward())
        } else {
            let loss = diffusion_loss(te, &self.sd.unet, &self.alphas_cumprod, self.prediction_type, &self.placeholder_ids, rows.clone(), batch);
            let scaled = if scale == 1.0 { loss.clone() } else { loss.clone().mul_scalar(scale) };
            let grads = scaled.backward();
            (loss.inner(), grads)
        };
        let grad = match rows.grad(&grads) {
            Some(g) => g.reshape([n * self.dim]),
            // no path from the rows to the loss (cannot happen with a placeholder in the prompt;
            // without one the gradient is zero)
            None => Tensor::<1>::zeros([n * self.dim], &self.grad_device.clone().inner()),
        };
        let both = Tensor::cat(vec![loss.reshape([1]), grad], 0);
        let mut v = read_f32(both).await?;
        let loss = v.remove(0);
        Ok((loss, v))
    }

    /// Loss and gradient d loss / d rows (`[n, D]` row-major) for `batch` with the current rows;
    /// changes nothing.
    pub async fn loss_and_grad(&self, batch: &Batch) -> Result<(f32, Vec<f32>), TrainError> {
        self.forward_backward(batch, 1.0).await
    }

    /// One micro-step: loss and gradient of `loss / gradient_accumulation_steps`, summed into
    /// the accumulated gradient; every `gradient_accumulation_steps` calls, one AdamW update
    /// with the scheduled learning rate (then the accumulated gradient is cleared).
    pub async fn step(&mut self, batch: &Batch) -> Result<StepReport, TrainError> {
        let a = self.config.gradient_accumulation_steps.max(1);
        let (loss, grad) = self.forward_backward(batch, 1.0 / a as f64).await?;
        for (acc, g) in self.accumulated_grad.iter_mut().zip(&grad) {
            *acc += g;
        }
        self.accumulated_micro_steps += 1;
        let mut lr = None;
        if self.accumulated_micro_steps >= a {
            let k = self.optimizer.state.step as usize;
            let step_lr = self.config.lr_schedule.lr(self.config.learning_rate, k);
            let acc = std::mem::replace(&mut self.accumulated_grad, vec![0.0; grad.len()]);
            self.optimizer.step(&mut self.rows, &acc, step_lr);
            self.accumulated_micro_steps = 0;
            lr = Some(step_lr);
        }
        Ok(StepReport { loss, grad, updated: lr.is_some(), optimizer_steps: self.optimizer.state.step, lr })
    }
}

/// diffusers' "object" templates (`imagenet_templates_small`).
pub const OBJECT_TEMPLATES: &[&str] = &[
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
];

/// diffusers' "style" templates (`imagenet_style_templates_small`).
pub const STYLE_TEMPLATES: &[&str] = &[
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
];
