//! Typed errors of the library, all of them here so that this module depends on nothing and
//! every other module can use it: weight files, configs, tokenizer folders, embedding files,
//! devices, user input, and (one file each) tokenizer, schedulers, photos, training and
//! SuppressEOT. Every message says what is wrong and what to do; the domain modules re-export
//! their error types.

use std::fmt;

mod photos;
mod schedulers;
mod suppress;
mod tokenizer;
mod train;

pub use photos::PhotoError;
pub use schedulers::{SCHEDULER_NAMES, SUPPORTED_CLASSES, SchedulerError};
pub use suppress::SuppressError;
pub use tokenizer::TokenizerError;
pub use train::TrainError;

/// A shape, printed like PyTorch prints one: `[49408, 768]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Errors while reading weights (safetensors files) or matching them to a model.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights file {file}: {reason}. Check that the file exists and is readable.")]
    Io { file: String, reason: String },

    #[error("{file}: corrupt safetensors header ({reason}). The file is damaged or not a safetensors file; download it again.")]
    CorruptHeader { file: String, reason: String },

    #[error("{file}: file is truncated: tensor `{key}` needs bytes up to {needed} but the file has {actual}. The download was probably interrupted; download it again.")]
    Truncated { file: String, key: String, needed: u64, actual: u64 },

    #[error("{file}: tensor `{key}` has {actual_bytes} bytes in the header's offsets but {dtype} x {shape} needs {expected_bytes}. The file is damaged.")]
    BadTensorSize { file: String, key: String, dtype: String, shape: Shape, expected_bytes: u64, actual_bytes: u64 },

    #[error("{file}: {} missing key(s) for {model}: {}. Is this the right file for this model folder (or a different architecture/config)?",
        .missing.len(), list_keys(.missing))]
    MissingKeys { file: String, model: String, missing: Vec<(String, Shape)> },

    #[error("{file}: {} unexpected key(s) not used by {model}: {}. The file belongs to a different architecture or config.json does not match it.",
        .unexpected.len(), list_names(.unexpected))]
    UnexpectedKeys { file: String, model: String, unexpected: Vec<String> },

    #[error("{file}: tensor `{key}` has shape {actual} but {model} (from its config.json) expects {expected}. The weights and config.json do not belong together.")]
    ShapeMismatch { file: String, model: String, key: String, expected: Shape, actual: Shape },

    #[error("{file}: tensor `{key}` has dtype {actual}; supported are F32, F16 and BF16. Convert the file (e.g. with diffusers' save_pretrained) to one of those.")]
    UnsupportedDtype { file: String, key: String, actual: String },

    #[error("no weights file in {dir}: tried {}. The folder must be in diffusers layout (e.g. text_encoder/model.safetensors).", .tried.join(", "))]
    NoWeightsFile { dir: String, tried: Vec<String> },

    #[error("{file} is not a Stable Diffusion 1.x/2.x single-file checkpoint: {reason}. Expected an original-LDM .safetensors as AUTOMATIC1111/ComfyUI use (keys `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`); for a diffusers model pass its folder, for a textual-inversion embedding, load it as an embedding instead.")]
    NotACheckpoint { file: String, reason: String },

    #[error("loading was cancelled")]
    Cancelled,

    #[error("{file}: {what} is not supported; this port loads SD 1.x/2.x text-to-image checkpoints. {hint}")]
    UnsupportedCheckpoint { file: String, what: String, hint: String },
}

fn list_keys(keys: &[(String, Shape)]) -> String {
    let mut s: Vec<String> = keys.iter().take(8).map(|(k, sh)| format!("`{k}` {sh}")).collect();
    if keys.len() > 8 {
        s.push(format!("... and {} more", keys.len() - 8));
    }
    s.join(", ")
}

fn list_names(keys: &[String]) -> String {
    let mut s: Vec<String> = keys.iter().take(8).map(|k| format!("`{k}`")).collect();
    if keys.len() > 8 {
        s.push(format!("... and {} more", keys.len() - 8));
    }
    s.join(", ")
}

/// Errors in a model folder's JSON configs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {file}: {reason}. The model folder must be in diffusers layout.")]
    Io { file: String, reason: String },
    #[error("{file}: invalid config: {reason}.")]
    Invalid { file: String, reason: String },
    #[error("{file} is a single-file checkpoint, which carries no tokenizer: give a CLIP tokenizer folder (vocab.json and merges.txt, e.g. the tokenizer/ of any SD 1.x/2.x diffusers model; SD 1 and 2 share the vocabulary), or put it in a tokenizer/ folder next to the file.")]
    NoTokenizer { file: String },
}

/// Errors in textual-inversion embedding files.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    #[error("embedding file {file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("embedding file {file}: its vectors have width {file_width} but the loaded text encoder has width {model_width}. The embedding was trained for a different model family (SD 1.x uses 768, SD 2.x 1024).")]
    WidthMismatch { file: String, file_width: usize, model_width: usize },
    #[error("embedding file {file}: token `{token}` already exists in the tokenizer. Give the embedding another token.")]
    TokenExists { file: String, token: String },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("embedding file {file}: refused: its pickle references `{global}`, which is not a tensor or a plain container. Pickles can run code when loaded, so only torch tensors, dicts, lists, strings and numbers are read and nothing in the file is executed. If you trust the file, convert it to .safetensors with torch; otherwise delete it.")]
    UnsafePickle { file: String, global: String },
    #[error("embedding file {file}: not a readable PyTorch checkpoint ({reason}). The file is damaged or was not written by torch.save; download it again or convert it to .safetensors.")]
    BadTorchFile { file: String, reason: String },
    #[error("embedding file {file}: this PNG has no `sd-ti-embedding` text chunk, so it carries no AUTOMATIC1111 embedding (embeddings hidden only in the image pixels are not supported). Use the original .pt/.safetensors file, or the PNG exactly as A1111 saved it (image hosts often strip text chunks).")]
    NoPngEmbedding { file: String },
    #[error("embedding file {file}: {reason}. Supported: diffusers learned_embeds .safetensors/.bin, AUTOMATIC1111 .pt/.safetensors, and A1111 embedding PNGs.")]
    UnsupportedFormat { file: String, reason: String },
}

/// Errors about the compute device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no GPU adapter available for wgpu ({reason}). Install a Vulkan/Metal driver, or run on the CPU.")]
    NoAdapter { reason: String },
    #[error("reading a result back from the device failed: {reason}")]
    Readback { reason: String },
    #[error("the device failed while running the work queued on it: {reason}")]
    Sync { reason: String },
}

/// Errors in what the user asked for (settings of a run, inputs, output files). Settings are
/// named by their field names (`steps`, `num_images`): the CLI shows them as its flags
/// (`--steps`), the page as its labels.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{setting} {reason}")]
    Setting { setting: &'static str, reason: String },
    #[error("width and height must be positive multiples of {multiple}, got {width}x{height}")]
    Size { multiple: usize, width: usize, height: usize },
    #[error("latents have shape {actual:?} but this run needs {expected:?}")]
    LatentShape { expected: Vec<usize>, actual: Vec<usize> },
    #[error("the run is already finished")]
    Finished,
    #[error("this UNet has no cross-attention in its down/up blocks: {what} cannot run on it")]
    NoCrossAttention { what: &'static str },
    #[error("cannot {action} {path}: {reason}")]
    File { action: &'static str, path: String, reason: String },
    #[error("{path}: no tensor `{name}` (found {found:?})")]
    NoTensor { path: String, name: String, found: Vec<String> },
    #[error("{path}: {size} bytes is far too large for an embedding file (a model checkpoint?); embeddings are kilobytes")]
    EmbeddingTooLarge { path: String, size: u64 },
}

impl InputError {
    /// `setting` (a settings field name) is invalid: `reason` says what it must be.
    pub fn setting(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Setting { setting, reason: reason.into() }
    }

    /// A file could not be read or written.
    pub fn file(action: &'static str, path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Self::File { action, path: path.to_string(), reason: reason.to_string() }
    }
}

/// What kind of remedy an error calls for, so each front end can name its own control for it
/// (the CLI a flag, the page a field) without the library naming either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Give a tokenizer folder (CLI `--tokenizer`).
    Tokenizer,
    /// Give the diffusers configs of the checkpoint (CLI `--config`, the page's "Configs from").
    Configs,
    /// Load the file as a textual-inversion embedding (CLI `--embedding`).
    Embedding,
    /// Give the embedding another token (CLI `--embedding FILE=TOKEN`).
    EmbeddingToken,
    /// Run on the CPU (CLI `--device cpu`).
    Cpu,
    /// Choose a scheduler explicitly (CLI `--scheduler`).
    Scheduler,
    /// Change the setting with this field name (CLI `--field-name`).
    Setting(&'static str),
}

/// Any error of the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Embedding(#[from] EmbeddingError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Suppress(#[from] SuppressError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Photo(#[from] PhotoError),
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The remedy this error calls for, when a front end has a control for it.
    pub fn remedy(&self) -> Option<Remedy> {
        match self {
            Error::Config(ConfigError::NoTokenizer { .. }) => Some(Remedy::Tokenizer),
            Error::Weights(WeightsError::UnsupportedCheckpoint { .. }) => Some(Remedy::Configs),
            Error::Weights(WeightsError::NotACheckpoint { .. }) => Some(Remedy::Embedding),
            Error::Embedding(EmbeddingError::TokenExists { .. }) => Some(Remedy::EmbeddingToken),
            Error::Device(DeviceError::NoAdapter { .. }) => Some(Remedy::Cpu),
            Error::Scheduler(SchedulerError::UnsupportedClass { .. }) => Some(Remedy::Scheduler),
            Error::Input(InputError::Setting { setting, .. }) => Some(Remedy::Setting(setting)),
            _ => None,
        }
    }
}
