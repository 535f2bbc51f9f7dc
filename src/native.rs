//! Native (non-wasm) conveniences: devices, model folders and embedding files on disk.
//! Futures here are driven with `pollster::block_on`: on native wgpu and the CPU backend
//! nothing in them waits on anything but file reads.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::embedding_files::{TextualInversion, read_safetensors_embedding};
use crate::error::{ConfigError, DeviceError, Error};
use crate::loader::load_text_encoder;
use crate::weights::WeightStorage;
use crate::pipeline::{PromptEncoder, StableDiffusion};
use crate::schedulers::{SchedulerConfig, SchedulerKind};
use crate::tokenizer::ClipTokenizer;
use crate::single_file::{self, SingleFileOptions};
use crate::weights::{FileSource, find_weights_file};

/// Which compute device to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// wgpu when an adapter exists, else the CPU.
    Auto,
    /// CPU backend (`flex`).
    Cpu,
    /// wgpu (Vulkan / Metal / DX12) GPU backend.
    Wgpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            other => Err(format!("unknown device `{other}`: use cpu, wgpu or auto")),
        }
    }
}

/// Initializes wgpu and returns its device, or why it failed.
pub fn init_wgpu() -> Result<Device, DeviceError> {
    // wgpu may panic instead of erroring on exotic driver failures: report those too.
    match std::panic::catch_unwind(|| Device::wgpu_options().init()) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(DeviceError::NoAdapter { reason: e.to_string() }),
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(DeviceError::NoAdapter { reason: msg.unwrap_or_else(|| "wgpu initialisation panicked".into()) })
        }
    }
}

/// Resolves a [`DeviceChoice`]; `Auto` falls back to the CPU (saying so on stderr).
pub fn select_device(choice: DeviceChoice) -> Result<(Device, &'static str), DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::flex(), "cpu")),
        DeviceChoice::Wgpu => init_wgpu().map(|d| (d, "wgpu")),
        DeviceChoice::Auto => match init_wgpu() {
            Ok(d) => Ok((d, "wgpu")),
            Err(e) => {
                eprintln!("note: {e}; running on the CPU");
                Ok((Device::flex(), "cpu"))
            }
        },
    }
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Io { file: path.display().to_string(), reason: e.to_string() })
}

/// Loads tokenizer + text encoder of a diffusers model folder (`tokenizer/`, `text_encoder/`).
/// `variant` picks `model.<variant>.safetensors` (e.g. `fp16`).
pub fn load_prompt_encoder(model_dir: &Path, variant: Option<&str>, device: &Device) -> Result<PromptEncoder, Error> {
    load_prompt_encoder_with(model_dir, variant, device, WeightStorage::F32)
}

/// [`load_prompt_encoder`] with the weights kept as `storage` says.
/// A single-file checkpoint (`.safetensors` with LDM keys) is accepted too, with the tokenizer from
/// a `tokenizer/` folder next to it (see [`crate::single_file`]; `variant` does not apply).
pub fn load_prompt_encoder_with(model_dir: &Path, variant: Option<&str>, device: &Device, storage: WeightStorage) -> Result<PromptEncoder, Error> {
    if model_dir.is_file() {
        return single_file::load_single_file_prompt_encoder(model_dir, &SingleFileOptions::default(), device, storage);
    }
    if !model_dir.is_dir() {
        return Err(Error::Input(format!("model folder {} does not exist or is not a folder", model_dir.display())));
    }
    let tokenizer = ClipTokenizer::from_dir(&model_dir.join("tokenizer"))?;
    let te_dir = model_dir.join("text_encoder");
    let config_path = te_dir.join("config.json");
    let config = read_text(&config_path)?;
    let weights = FileSource::open(&find_weights_file(&te_dir, variant)?)?;
    let model = pollster::block_on(load_text_encoder(&config, &config_path.display().to_string(), &weights, device, storage, &mut |_, _, _| {}))?;
    Ok(PromptEncoder::new(tokenizer, model))
}

/// Parses `PATH[=TOKEN]` as given to `--embedding`.
pub fn parse_embedding_arg(arg: &str) -> (PathBuf, Option<String>) {
    // A path may itself contain '='; only split when the part before it is an existing file.
    if let Some((p, t)) = arg.rsplit_once('=') {
        if Path::new(p).is_file() && !t.is_empty() {
            return (PathBuf::from(p), Some(t.to_string()));
        }
    }
    (PathBuf::from(arg), None)
}

/// Reads an embedding file from disk (formats: see [`crate::embedding_files`]; detected from the
/// content). Safetensors files are read tensor by tensor; other formats are read whole, up to
/// 256 MiB (embedding files are kilobytes).
pub fn read_embedding_file(path: &Path, token: Option<&str>) -> Result<TextualInversion, Error> {
    use crate::weights::ByteSource;
    const MAX_WHOLE: u64 = 256 << 20;
    let source = FileSource::open(path)?;
    let name = path.display().to_string();
    let head = pollster::block_on(source.read(0, source.len().min(16) as usize))?;
    // A safetensors header: u64 length, then the JSON header's `{`.
    if head.len() > 8 && head[8] == b'{' {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("embedding");
        return Ok(pollster::block_on(read_safetensors_embedding(&source, token, stem))?);
    }
    if source.len() > MAX_WHOLE {
        return Err(Error::Input(format!(
            "{name}: {} bytes is far too large for an embedding file (a model checkpoint?); embeddings are kilobytes",
            source.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| crate::error::WeightsError::Io { file: name.clone(), reason: e.to_string() })?;
    Ok(crate::embedding_files::read_embedding(&bytes, &name, token)?)
}

/// Reads tensor `name` of a safetensors file as f32 (`--latents` and similar inputs):
/// `(shape, values)`.
pub fn read_f32_tensor(path: &Path, name: &str) -> Result<(Vec<usize>, Vec<f32>), Error> {
    let source = FileSource::open(path)?;
    let header = pollster::block_on(crate::weights::SafetensorsHeader::read(&source))?;
    let entry = header.tensors.get(name).ok_or_else(|| {
        let mut names: Vec<&String> = header.tensors.keys().collect();
        names.sort();
        Error::Input(format!("{}: no tensor `{name}` (found {names:?})", path.display()))
    })?;
    let values = pollster::block_on(crate::weights::read_tensor_f32(&source, entry))?;
    Ok((entry.shape.clone(), values))
}

/// Loads a model folder (as [`load_stable_diffusion_with`]) or a single-file checkpoint with
/// `single` saying where its tokenizer and configs come from.
pub fn load_model(path: &Path, variant: Option<&str>, single: &SingleFileOptions, device: &Device, storage: WeightStorage) -> Result<StableDiffusion, Error> {
    if path.is_file() {
        return single_file::load_single_file(path, single, device, storage);
    }
    load_stable_diffusion_with(path, variant, device, storage)
}

/// [`load_prompt_encoder_with`] for a folder or, with `single`'s options, a single file.
pub fn load_model_prompt_encoder(path: &Path, variant: Option<&str>, single: &SingleFileOptions, device: &Device, storage: WeightStorage) -> Result<PromptEncoder, Error> {
    if path.is_file() {
        return single_file::load_single_file_prompt_encoder(path, single, device, storage);
    }
    load_prompt_encoder_with(path, variant, device, storage)
}

/// Loads a whole diffusers Stable Diffusion folder (`tokenizer/`, `text_encoder/`, `unet/`,
/// `vae/`, `scheduler/`) onto `device`. `variant` picks `*.<variant>.safetensors` weights.
pub fn load_stable_diffusion(model_dir: &Path, variant: Option<&str>, device: &Device) -> Result<StableDiffusion, Error> {
    load_stable_diffusion_with(model_dir, variant, device, WeightStorage::F32)
}

/// [`load_stable_diffusion`] with the weights kept as `storage` says (`F16`: half the memory,
/// f32 compute). A single-file checkpoint is accepted too, with the tokenizer from a `tokenizer/`
/// folder next to it and inferred configs ([`load_model`] takes the options).
pub fn load_stable_diffusion_with(model_dir: &Path, variant: Option<&str>, device: &Device, storage: WeightStorage) -> Result<StableDiffusion, Error> {
    if model_dir.is_file() {
        return single_file::load_single_file(model_dir, &SingleFileOptions::default(), device, storage);
    }
    let prompt = load_prompt_encoder_with(model_dir, variant, device, storage)?;
    let component = |name: &str| -> Result<(String, String, FileSource), Error> {
        let dir = model_dir.join(name);
        let config_path = dir.join("config.json");
        let config = read_text(&config_path)?;
        let weights = FileSource::open(&find_weights_file(&dir, variant)?)?;
        Ok((config, config_path.display().to_string(), weights))
    };
    let (c, f, w) = component("unet")?;
    let sample_size = crate::loader::unet_sample_size(&c);
    let unet = pollster::block_on(crate::loader::load_unet(&c, &f, &w, device, storage, &mut |_, _, _| {}))?;
    let (c, f, w) = component("vae")?;
    let vae = pollster::block_on(crate::loader::load_vae(&c, &f, &w, device, storage, &mut |_, _, _| {}))?;
    let sched_path = model_dir.join("scheduler/scheduler_config.json");
    let sched_text = read_text(&sched_path)?;
    let scheduler_config = SchedulerConfig::from_json(&sched_text, &sched_path.display().to_string())?;
    let default_scheduler = SchedulerKind::from_config(&scheduler_config)?;
    let name = model_dir.file_name().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    Ok(StableDiffusion { prompt, unet, vae, scheduler_config, default_scheduler, name, sample_size })
}

