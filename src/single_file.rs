//! Native loading of original-LDM single-file checkpoints (`v1-5-pruned-emaonly.safetensors`,
//! ...) into the same [`StableDiffusion`] a diffusers folder gives: diffusers'
//! `StableDiffusionPipeline.from_single_file(path, config=...)`. Keys are converted while loading
//! ([`crate::weights::ldm`]), tensors stream one at a time from the file.
//!
//! A single file has no tokenizer and no configs: the tokenizer comes from
//! [`SingleFileOptions::tokenizer`], else `<config>/tokenizer`, else a `tokenizer/` folder next to
//! the file; configs from [`SingleFileOptions::config`] (a diffusers folder: its
//! `unet/config.json`, ... replace the inferred ones, like diffusers' `config=`), else inferred
//! from the tensor shapes.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::{ConfigError, Error};
use crate::loader::{load_text_encoder_from, load_unet_from, load_vae_from, unet_sample_size};
use crate::models::{AutoencoderKLConfig, CLIPTextConfig, UNet2DConditionConfig};
use crate::pipeline::{PromptEncoder, StableDiffusion};
use crate::schedulers::{PredictionType, SchedulerConfig, SchedulerKind};
use crate::tokenizer::{ClipTokenizer, TokenizerFiles};
use crate::weights::{FileSource, LdmCheckpoint, SafetensorsHeader, WeightStorage};

/// What a single file does not carry.
#[derive(Clone, Debug, Default)]
pub struct SingleFileOptions {
    /// Tokenizer folder (`vocab.json`, `merges.txt`, ...).
    pub tokenizer: Option<PathBuf>,
    /// A diffusers folder whose `unet/`, `vae/`, `text_encoder/` `config.json` and
    /// `scheduler/scheduler_config.json` are used instead of inferring them (those it has).
    pub config: Option<PathBuf>,
    /// The scheduler's `prediction_type` (v_prediction for SD 2.x 768-v models); epsilon if unset.
    pub prediction_type: Option<PredictionType>,
}

/// A single-file checkpoint opened and split into components (header only).
pub struct OpenedCheckpoint {
    pub source: FileSource,
    pub checkpoint: LdmCheckpoint,
}

/// Opens `path` and converts its header.
pub fn open_checkpoint(path: &Path) -> Result<OpenedCheckpoint, Error> {
    let source = FileSource::open(path)?;
    let header = pollster::block_on(SafetensorsHeader::read(&source))?;
    let checkpoint = LdmCheckpoint::from_header(&header)?;
    Ok(OpenedCheckpoint { source, checkpoint })
}

/// Where the tokenizer of the single file `path` is (see the module docs), or
/// [`ConfigError::NoTokenizer`].
pub fn tokenizer_dir(path: &Path, opts: &SingleFileOptions) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = &opts.tokenizer {
        return Ok(dir.clone());
    }
    let candidates = opts.config.iter().map(|c| c.join("tokenizer")).chain(path.parent().map(|p| p.join("tokenizer")));
    for dir in candidates {
        if dir.join("vocab.json").is_file() {
            return Ok(dir);
        }
    }
    Err(ConfigError::NoTokenizer { file: path.display().to_string() })
}

/// The tokenizer with the checkpoint's pad token (SD 1 `<|endoftext|>`, SD 2 `!`).
fn tokenizer(path: &Path, opts: &SingleFileOptions, ckpt: &LdmCheckpoint) -> Result<ClipTokenizer, Error> {
    let dir = tokenizer_dir(path, opts)?;
    let mut files = TokenizerFiles::from_dir(&dir)?;
    files.set_pad_token(ckpt.pad_token());
    Ok(ClipTokenizer::from_files(&files)?)
}

/// A component's config: `<config>/<name>` when given and present, else `infer()`; with the file
/// name used in messages.
fn config_text(opts: &SingleFileOptions, name: &str, infer: impl FnOnce() -> Result<String, crate::error::WeightsError>) -> Result<(String, String), Error> {
    if let Some(path) = opts.config.as_ref().map(|d| d.join(name)).filter(|p| p.is_file()) {
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Io { file: path.display().to_string(), reason: e.to_string() })?;
        return Ok((text, path.display().to_string()));
    }
    Ok((infer()?, format!("{name} (inferred from the checkpoint)")))
}

/// The tokenizer for the single file `path` (reads only its header, for the pad token).
pub fn load_single_file_tokenizer(path: &Path, opts: &SingleFileOptions) -> Result<ClipTokenizer, Error> {
    let o = open_checkpoint(path)?;
    tokenizer(path, opts, &o.checkpoint)
}

/// Tokenizer + text encoder of a single file.
pub fn load_single_file_prompt_encoder(path: &Path, opts: &SingleFileOptions, device: &Device, storage: WeightStorage) -> Result<PromptEncoder, Error> {
    let o = open_checkpoint(path)?;
    prompt_encoder(path, opts, &o, device, storage)
}

fn prompt_encoder(path: &Path, opts: &SingleFileOptions, o: &OpenedCheckpoint, device: &Device, storage: WeightStorage) -> Result<PromptEncoder, Error> {
    let ckpt = &o.checkpoint;
    let tokenizer = tokenizer(path, opts, ckpt)?;
    let (text, file) = config_text(opts, "text_encoder/config.json", || ckpt.text_encoder_config())?;
    let config = CLIPTextConfig::from_json(&text, &file)?;
    let model = pollster::block_on(load_text_encoder_from(&config, &ckpt.text_encoder, &o.source, device, storage, &mut |_, _, _| {}))?;
    Ok(PromptEncoder::new(tokenizer, model))
}

/// Loads a whole single-file checkpoint (see the module docs).
pub fn load_single_file(path: &Path, opts: &SingleFileOptions, device: &Device, storage: WeightStorage) -> Result<StableDiffusion, Error> {
    let o = open_checkpoint(path)?;
    let ckpt = &o.checkpoint;
    let prompt = prompt_encoder(path, opts, &o, device, storage)?;
    let (text, file) = config_text(opts, "unet/config.json", || ckpt.unet_config(opts.prediction_type))?;
    let sample_size = unet_sample_size(&text);
    let config = UNet2DConditionConfig::from_json(&text, &file)?;
    let unet = pollster::block_on(load_unet_from(&config, &ckpt.unet, &o.source, device, storage, &mut |_, _, _| {}))?;
    let (text, file) = config_text(opts, "vae/config.json", || ckpt.vae_config())?;
    let config = AutoencoderKLConfig::from_json(&text, &file)?;
    let vae = pollster::block_on(load_vae_from(&config, &ckpt.vae, &o.source, device, storage, &mut |_, _, _| {}))?;
    let (text, file) = config_text(opts, "scheduler/scheduler_config.json", || Ok(ckpt.scheduler_config(opts.prediction_type)))?;
    let mut scheduler_config = SchedulerConfig::from_json(&text, &file)?;
    if let Some(p) = opts.prediction_type {
        scheduler_config.prediction_type = Some(p.as_str().to_string());
    }
    let default_scheduler = SchedulerKind::from_config(&scheduler_config)?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    Ok(StableDiffusion { prompt, unet, vae, scheduler_config, default_scheduler, name, sample_size })
}
