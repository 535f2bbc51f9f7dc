//! The one model loader: diffusers' `StableDiffusionPipeline.from_pretrained(folder, variant=...)`
//! and `.from_single_file(path, config=...)` over any [`ModelFiles`], the relative paths of a
//! model (`tokenizer/vocab.json`, `unet/config.json`, `unet/diffusion_pytorch_model.safetensors`,
//! or an original-LDM checkpoint) mapped to byte sources. Natively they are files
//! ([`crate::native::DirFiles`]), in the browser `Blob`s (`crate::web`); the CLI, the page,
//! single-file checkpoints and `bench` all build their pipeline here, tensor by tensor.
//!
//! Cancel: `progress` returns `false` to stop before the next tensor ([`Error::Cancelled`]).

use std::future::Future;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Error, WeightsError};
use crate::models::{AutoencoderKL, AutoencoderKLConfig, CLIPTextConfig, CLIPTextModel, UNet2DConditionConfig, UNet2DConditionModel};
use crate::pipeline::{PromptEncoder, StableDiffusion};
use crate::prediction_type::PredictionType;
use crate::schedulers::{SchedulerConfig, SchedulerKind};
use crate::tokenizer::{ClipTokenizer, TokenizerError, TokenizerFiles};
use crate::weights::{ByteSource, LdmCheckpoint, ParamSpec, SafetensorsHeader, TensorMap, WeightStorage, load_params};

/// The files of a model, by path relative to the model folder (`/`-separated).
pub trait ModelFiles {
    /// A file opened for ranged reads.
    type Source: ByteSource;
    /// Opens `path`; `None` when the model has no such file.
    fn open(&self, path: &str) -> Result<Option<Self::Source>, Error>;
    /// The whole text of `path` (configs, tokenizer files); `None` when absent.
    fn read_text(&self, path: &str) -> impl Future<Output = Result<Option<String>, Error>>;
    /// How `path` is named in messages (natively the full path on disk).
    fn display(&self, path: &str) -> String;
}

/// Which parts to load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parts {
    /// Everything the files have: the whole pipeline when there is a `unet/config.json` (or a
    /// single file), else the tokenizer and text encoder only.
    #[default]
    Available,
    /// Tokenizer and text encoder only (encoding prompts).
    TextEncoder,
    /// The whole pipeline; a folder without `unet/` or `vae/` is an error.
    All,
}

/// How to load a model: the same options natively (CLI flags) and in the browser (a JS object
/// deserialised with serde; absent fields take these defaults).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadOptions {
    /// Name shown in image metadata (default: the folder or file name).
    pub name: Option<String>,
    /// How weights are kept on the device (f32, or f16 matrices).
    pub storage: WeightStorage,
    /// Weights variant: `fp16` loads `*.fp16.safetensors` (diffusers' `variant=`).
    pub variant: Option<String>,
    /// Path (in the model's files) of an original-LDM single-file checkpoint; configs present in
    /// the files replace the inferred ones (diffusers' `config=`).
    pub single_file: Option<String>,
    /// The scheduler's `prediction_type` for a single file (v_prediction for SD 2.x 768-v).
    #[serde(with = "crate::serde_str::opt")]
    pub prediction_type: Option<PredictionType>,
    /// Which parts to load.
    pub parts: Parts,
}

/// One tensor loaded: `stage` is the component (`text_encoder`, `unet`, `vae`).
#[derive(Clone, Copy, Debug)]
pub struct LoadProgress<'a> {
    pub stage: &'static str,
    pub loaded: usize,
    pub total: usize,
    pub key: &'a str,
}

/// What [`load`] built.
pub enum Loaded {
    /// Tokenizer and text encoder only.
    Text(PromptEncoder),
    /// The whole pipeline.
    Full(Box<StableDiffusion>),
}

impl Loaded {
    pub fn prompt(&self) -> &PromptEncoder {
        match self {
            Loaded::Text(e) => e,
            Loaded::Full(sd) => &sd.prompt,
        }
    }
    pub fn prompt_mut(&mut self) -> &mut PromptEncoder {
        match self {
            Loaded::Text(e) => e,
            Loaded::Full(sd) => &mut sd.prompt,
        }
    }
    /// The whole pipeline, or why there is none.
    pub fn into_full(self) -> Result<StableDiffusion, Error> {
        match self {
            Loaded::Full(sd) => Ok(*sd),
            Loaded::Text(_) => Err(ConfigError::Io { file: "unet/config.json".into(), reason: "the model has no unet/ and vae/: it can encode prompts but not generate".into() }.into()),
        }
    }
}

/// What was loaded, for the page's model facts.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub text_config: CLIPTextConfig,
    /// The text encoder's weights file (or the single file).
    pub weights_file: String,
    /// Its first tensor's dtype (`F32`, `F16`, ...).
    pub weights_dtype: String,
}

/// A diffusers model class loadable from a config and a safetensors header.
pub trait Component: Sized {
    type Config;
    /// The class name (key rules and messages).
    const NAME: &'static str;
    fn config_from_json(text: &str, file: &str) -> Result<Self::Config, ConfigError>;
    fn specs(config: &Self::Config) -> Vec<ParamSpec>;
    fn build(config: &Self::Config, map: &mut TensorMap) -> Self;
}

macro_rules! component {
    ($model:ty, $config:ty) => {
        impl Component for $model {
            type Config = $config;
            const NAME: &'static str = <$model>::NAME;
            fn config_from_json(text: &str, file: &str) -> Result<$config, ConfigError> {
                <$config>::from_json(text, file)
            }
            fn specs(config: &$config) -> Vec<ParamSpec> {
                <$model>::param_specs(config)
            }
            fn build(config: &$config, map: &mut TensorMap) -> Self {
                <$model>::from_map(config, map)
            }
        }
    };
}
component!(CLIPTextModel, CLIPTextConfig);
component!(UNet2DConditionModel, UNet2DConditionConfig);
component!(AutoencoderKL, AutoencoderKLConfig);

/// Loads one component whose tensors `header` locates in `source` (a file's own header, or a
/// component of an [`LdmCheckpoint`]); `progress(done, total, key)` after each tensor, `false`
/// cancels.
pub async fn load_component_from<M: Component, S: ByteSource>(
    config: &M::Config,
    header: &SafetensorsHeader,
    source: &S,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str) -> bool,
) -> Result<M, Error> {
    let specs = M::specs(config);
    let mut map = match load_params(source, header, M::NAME, &specs, device, storage, progress).await {
        Err(WeightsError::Cancelled) => return Err(Error::Cancelled),
        r => r?,
    };
    let model = M::build(config, &mut map);
    debug_assert!(map.remaining().is_empty());
    Ok(model)
}

/// Loads one component from its `config.json` text (`config_file` names it in messages) and its
/// own safetensors `source`.
pub async fn load_component<M: Component, S: ByteSource>(
    config_json: &str,
    config_file: &str,
    source: &S,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str) -> bool,
) -> Result<M, Error> {
    let config = M::config_from_json(config_json, config_file)?;
    let header = SafetensorsHeader::read(source).await?;
    load_component_from::<M, S>(&config, &header, source, device, storage, progress).await
}

/// The weights file names tried in a component folder, in order: `model` then
/// `diffusion_pytorch_model`, with `.<variant>` when one is asked for; without one, the plain
/// files, then the fp16 variant (users often download only that one).
pub fn weights_candidates(variant: Option<&str>) -> Vec<String> {
    let stems = ["model", "diffusion_pytorch_model"];
    match variant {
        Some(v) => stems.iter().map(|s| format!("{s}.{v}.safetensors")).collect(),
        None => ["safetensors", "fp16.safetensors"].iter().flat_map(|ext| stems.iter().map(move |s| format!("{s}.{ext}"))).collect(),
    }
}

/// The weights file of `component` (`text_encoder`, `unet`, `vae`): `(path, source)`.
fn open_weights<F: ModelFiles>(files: &F, component: &str, variant: Option<&str>) -> Result<(String, F::Source), Error> {
    let tried = weights_candidates(variant);
    for name in &tried {
        let path = format!("{component}/{name}");
        if let Some(s) = files.open(&path)? {
            return Ok((path, s));
        }
    }
    Err(WeightsError::NoWeightsFile { dir: files.display(component), tried }.into())
}

async fn required_text<F: ModelFiles>(files: &F, path: &str) -> Result<String, Error> {
    files.read_text(path).await?.ok_or_else(|| ConfigError::Io { file: files.display(path), reason: "missing from the model folder".into() }.into())
}

/// The tokenizer files under `tokenizer/`.
pub async fn tokenizer_files<F: ModelFiles>(files: &F) -> Result<TokenizerFiles, Error> {
    let required = |path: &str, text: Option<String>| text.ok_or_else(|| Error::from(TokenizerError::MissingFile { path: files.display(path) }));
    Ok(TokenizerFiles {
        vocab_json: required("tokenizer/vocab.json", files.read_text("tokenizer/vocab.json").await?)?,
        merges_txt: required("tokenizer/merges.txt", files.read_text("tokenizer/merges.txt").await?)?,
        tokenizer_config_json: files.read_text("tokenizer/tokenizer_config.json").await?,
        special_tokens_map_json: files.read_text("tokenizer/special_tokens_map.json").await?,
    })
}

/// The tokenizer only (no device, no weights): for a single file, its pad token follows the
/// checkpoint (SD 1 `<|endoftext|>`, SD 2 `!`).
pub async fn load_tokenizer<F: ModelFiles>(files: &F, opts: &LoadOptions) -> Result<ClipTokenizer, Error> {
    let mut tok = tokenizer_files(files).await?;
    if let Some(path) = &opts.single_file {
        let source = files.open(path)?.ok_or_else(|| WeightsError::Io { file: files.display(path), reason: "no such file".into() })?;
        let header = SafetensorsHeader::read(&source).await?;
        tok.set_pad_token(LdmCheckpoint::from_header(&header)?.pad_token());
    }
    Ok(ClipTokenizer::from_files(&tok)?)
}

/// `sample_size` of a UNet config (an int, or `[h, w]`: the height), 64 when absent.
pub fn unet_sample_size(config_json: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(config_json).unwrap_or_default();
    match &v["sample_size"] {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(64) as usize,
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()).unwrap_or(64) as usize,
        _ => 64,
    }
}

/// A component's config text and its name for messages: the file when the model has it, else
/// `infer()` (single files: from the tensor shapes).
async fn config_or<F: ModelFiles>(files: &F, path: &str, infer: impl FnOnce() -> Result<String, WeightsError>) -> Result<(String, String), Error> {
    match files.read_text(path).await? {
        Some(text) => Ok((text, files.display(path))),
        None => Ok((infer()?, format!("{path} (inferred from the checkpoint)"))),
    }
}

/// `progress` for the tensors of one component.
fn staged<'a>(progress: &'a mut dyn FnMut(LoadProgress<'_>) -> bool, stage: &'static str) -> impl FnMut(usize, usize, &str) -> bool + 'a {
    move |loaded, total, key| progress(LoadProgress { stage, loaded, total, key })
}

/// Loads a model (see the module docs). `progress` after each tensor; `false` cancels.
pub async fn load<F: ModelFiles>(
    files: &F,
    opts: &LoadOptions,
    device: &Device,
    progress: &mut dyn FnMut(LoadProgress<'_>) -> bool,
) -> Result<(Loaded, LoadReport), Error> {
    let storage = opts.storage;
    let mut tok = tokenizer_files(files).await?;
    let name = opts.name.clone();

    if let Some(path) = &opts.single_file {
        // an original-LDM checkpoint, converted while loading
        let source = files.open(path)?.ok_or_else(|| WeightsError::Io { file: files.display(path), reason: "no such file".into() })?;
        let header = SafetensorsHeader::read(&source).await?;
        let weights_dtype = header.tensors.values().next().map(|e| e.dtype_name.clone()).unwrap_or_default();
        let ckpt = LdmCheckpoint::from_header(&header)?;
        drop(header);
        tok.set_pad_token(ckpt.pad_token());
        let tokenizer = ClipTokenizer::from_files(&tok)?;
        let prediction = opts.prediction_type;
        let (text, file) = config_or(files, "text_encoder/config.json", || ckpt.text_encoder_config()).await?;
        let text_config = CLIPTextConfig::from_json(&text, &file)?;
        let model = load_component_from::<CLIPTextModel, _>(&text_config, &ckpt.text_encoder, &source, device, storage, &mut staged(&mut *progress, "text_encoder")).await?;
        let prompt = PromptEncoder::new(tokenizer, model);
        let report = LoadReport { text_config, weights_file: path.clone(), weights_dtype };
        if opts.parts == Parts::TextEncoder {
            return Ok((Loaded::Text(prompt), report));
        }
        let (text, file) = config_or(files, "unet/config.json", || ckpt.unet_config(prediction)).await?;
        let sample_size = unet_sample_size(&text);
        let config = UNet2DConditionConfig::from_json(&text, &file)?;
        let unet = load_component_from::<UNet2DConditionModel, _>(&config, &ckpt.unet, &source, device, storage, &mut staged(&mut *progress, "unet")).await?;
        let (text, file) = config_or(files, "vae/config.json", || ckpt.vae_config()).await?;
        let config = AutoencoderKLConfig::from_json(&text, &file)?;
        let vae = load_component_from::<AutoencoderKL, _>(&config, &ckpt.vae, &source, device, storage, &mut staged(&mut *progress, "vae")).await?;
        let (text, file) = config_or(files, "scheduler/scheduler_config.json", || Ok(ckpt.scheduler_config(prediction))).await?;
        let mut scheduler_config = SchedulerConfig::from_json(&text, &file)?;
        if let Some(p) = prediction {
            scheduler_config.prediction_type = Some(p.as_str().to_string());
        }
        let default_scheduler = SchedulerKind::from_config(&scheduler_config)?;
        let stem = path.rsplit('/').next().unwrap_or(path).trim_end_matches(".safetensors").to_string();
        let name = name.unwrap_or(stem);
        let sd = StableDiffusion { prompt, unet, vae, scheduler_config, default_scheduler, name, sample_size };
        return Ok((Loaded::Full(Box::new(sd)), report));
    }

    // a diffusers folder
    let variant = opts.variant.as_deref();
    let tokenizer = ClipTokenizer::from_files(&tok)?;
    let config = required_text(files, "text_encoder/config.json").await?;
    let (weights_file, source) = open_weights(files, "text_encoder", variant)?;
    let header = SafetensorsHeader::read(&source).await?;
    let weights_dtype = header.tensors.values().next().map(|e| e.dtype_name.clone()).unwrap_or_default();
    let text_config = CLIPTextConfig::from_json(&config, &files.display("text_encoder/config.json"))?;
    let model = load_component_from::<CLIPTextModel, _>(&text_config, &header, &source, device, storage, &mut staged(&mut *progress, "text_encoder")).await?;
    drop((header, source));
    let prompt = PromptEncoder::new(tokenizer, model);
    let report = LoadReport { text_config, weights_file, weights_dtype };
    if opts.parts == Parts::TextEncoder {
        return Ok((Loaded::Text(prompt), report));
    }
    let unet_config = match files.read_text("unet/config.json").await? {
        Some(text) => text,
        None if opts.parts == Parts::Available => return Ok((Loaded::Text(prompt), report)),
        None => required_text(files, "unet/config.json").await?,
    };
    let (_, unet_src) = open_weights(files, "unet", variant)?;
    let unet = load_component::<UNet2DConditionModel, _>(&unet_config, &files.display("unet/config.json"), &unet_src, device, storage, &mut staged(&mut *progress, "unet")).await?;
    drop(unet_src);
    let vae_config = required_text(files, "vae/config.json").await?;
    let (_, vae_src) = open_weights(files, "vae", variant)?;
    let vae = load_component::<AutoencoderKL, _>(&vae_config, &files.display("vae/config.json"), &vae_src, device, storage, &mut staged(&mut *progress, "vae")).await?;
    let sched_text = required_text(files, "scheduler/scheduler_config.json").await?;
    let scheduler_config = SchedulerConfig::from_json(&sched_text, &files.display("scheduler/scheduler_config.json"))?;
    let default_scheduler = SchedulerKind::from_config(&scheduler_config)?;
    let sd = StableDiffusion {
        prompt,
        unet,
        vae,
        scheduler_config,
        default_scheduler,
        name: name.unwrap_or_else(|| "model".into()),
        sample_size: unet_sample_size(&unet_config),
    };
    Ok((Loaded::Full(Box::new(sd)), report))
}
