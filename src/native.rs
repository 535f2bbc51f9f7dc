//! Native (non-wasm) conveniences: devices, model folders and single files on disk (the
//! [`crate::loader::ModelFiles`] of the CLI, tests and `bench`) and embedding files.
//! Futures here are driven with `pollster::block_on`: on native wgpu and the CPU backend
//! nothing in them waits on anything but file reads.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::embedding_files::{TextualInversion, read_safetensors_embedding};
use crate::error::{ConfigError, DeviceError, Error, InputError};
use crate::loader::{LoadOptions, Loaded, Parts};
use crate::pipeline::{PromptEncoder, StableDiffusion};
use crate::prediction_type::PredictionType;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{FileSource, WeightStorage};

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

/// A model's files on disk (see [`crate::loader::ModelFiles`]): exact files first, then folders
/// mounted under a path prefix (`""` for a model folder, `"tokenizer/"` for a tokenizer folder).
#[derive(Clone, Debug, Default)]
pub struct DirFiles {
    files: Vec<(String, PathBuf)>,
    mounts: Vec<(String, PathBuf)>,
}

impl DirFiles {
    /// The files of a diffusers model folder.
    pub fn folder(dir: &Path) -> Self {
        Self { files: vec![], mounts: vec![(String::new(), dir.to_path_buf())] }
    }

    /// Where `path` is on disk, if it exists.
    pub fn resolve(&self, path: &str) -> Option<PathBuf> {
        if let Some((_, p)) = self.files.iter().find(|(k, _)| k == path) {
            return Some(p.clone());
        }
        self.mounts.iter().find_map(|(prefix, dir)| path.strip_prefix(prefix.as_str()).map(|rest| dir.join(rest)).filter(|p| p.is_file()))
    }
}

impl crate::loader::ModelFiles for DirFiles {
    type Source = FileSource;
    fn open(&self, path: &str) -> Result<Option<FileSource>, Error> {
        Ok(self.resolve(path).map(|p| FileSource::open(&p)).transpose()?)
    }
    async fn read_text(&self, path: &str) -> Result<Option<String>, Error> {
        let Some(p) = self.resolve(path) else { return Ok(None) };
        let text = std::fs::read_to_string(&p).map_err(|e| ConfigError::Io { file: p.display().to_string(), reason: e.to_string() })?;
        Ok(Some(text))
    }
    fn display(&self, path: &str) -> String {
        match self.resolve(path) {
            Some(p) => p.display().to_string(),
            None => match self.mounts.first() {
                Some((prefix, dir)) => dir.join(path.strip_prefix(prefix.as_str()).unwrap_or(path)).display().to_string(),
                None => path.to_string(),
            },
        }
    }
}

/// What a single-file checkpoint does not carry.
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

/// The files and load options of the model at `path`: a diffusers folder, or an original-LDM
/// single file whose tokenizer is `single.tokenizer`, else `<config>/tokenizer`, else a
/// `tokenizer/` folder next to the file, and whose configs come from `single.config` (else they
/// are inferred from the tensor shapes).
pub fn model_files(path: &Path, single: &SingleFileOptions, opts: &LoadOptions) -> Result<(DirFiles, LoadOptions), Error> {
    let mut opts = opts.clone();
    let stem = |p: &Path| p.file_stem().or_else(|| p.file_name()).and_then(|s| s.to_str()).unwrap_or("model").to_string();
    if path.is_dir() {
        opts.name.get_or_insert_with(|| path.file_name().and_then(|s| s.to_str()).unwrap_or("model").to_string());
        return Ok((DirFiles::folder(path), opts));
    }
    if !path.is_file() {
        return Err(ConfigError::Io { file: path.display().to_string(), reason: "no such model folder or checkpoint file".into() }.into());
    }
    // the checkpoint first (an embedding or a component file is refused as such), then its tokenizer
    let header = pollster::block_on(crate::weights::SafetensorsHeader::read(&FileSource::open(path)?))?;
    crate::weights::LdmCheckpoint::from_header(&header)?;
    drop(header);
    let key = path.file_name().and_then(|s| s.to_str()).unwrap_or("checkpoint.safetensors").to_string();
    let tokenizer = single
        .tokenizer
        .clone()
        .into_iter()
        .chain(single.config.iter().map(|c| c.join("tokenizer")))
        .chain(path.parent().map(|p| p.join("tokenizer")))
        .find(|dir| single.tokenizer.as_ref() == Some(dir) || dir.join("vocab.json").is_file())
        .ok_or_else(|| ConfigError::NoTokenizer { file: path.display().to_string() })?;
    let mut mounts = vec![("tokenizer/".to_string(), tokenizer)];
    if let Some(c) = &single.config {
        mounts.push((String::new(), c.clone()));
    }
    opts.name.get_or_insert_with(|| stem(path));
    opts.single_file = Some(key.clone());
    opts.prediction_type = single.prediction_type.or(opts.prediction_type);
    Ok((DirFiles { files: vec![(key, path.to_path_buf())], mounts }, opts))
}

/// Loads the model at `path` (folder or single file, see [`model_files`]) through
/// [`crate::loader::load`].
pub fn load(path: &Path, single: &SingleFileOptions, opts: &LoadOptions, device: &Device) -> Result<Loaded, Error> {
    let (files, opts) = model_files(path, single, opts)?;
    Ok(pollster::block_on(crate::loader::load(&files, &opts, device, &mut |_| true))?.0)
}

/// The tokenizer of the model at `path` (no weights are read but a single file's header).
pub fn load_tokenizer(path: &Path, single: &SingleFileOptions) -> Result<ClipTokenizer, Error> {
    let (files, opts) = model_files(path, single, &LoadOptions::default())?;
    pollster::block_on(crate::loader::load_tokenizer(&files, &opts))
}

/// Tokenizer + text encoder of a model folder or single file. `variant` picks
/// `model.<variant>.safetensors` (e.g. `fp16`).
pub fn load_prompt_encoder(model_dir: &Path, variant: Option<&str>, device: &Device) -> Result<PromptEncoder, Error> {
    load_prompt_encoder_with(model_dir, variant, device, WeightStorage::F32)
}

/// [`load_prompt_encoder`] with the weights kept as `storage` says.
pub fn load_prompt_encoder_with(model_dir: &Path, variant: Option<&str>, device: &Device, storage: WeightStorage) -> Result<PromptEncoder, Error> {
    let opts = LoadOptions { variant: variant.map(str::to_string), storage, parts: Parts::TextEncoder, ..LoadOptions::default() };
    match load(model_dir, &SingleFileOptions::default(), &opts, device)? {
        Loaded::Text(e) => Ok(e),
        Loaded::Full(sd) => Ok(sd.prompt),
    }
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
        return Err(InputError::EmbeddingTooLarge { path: name, size: source.len() }.into());
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
        InputError::NoTensor { path: path.display().to_string(), name: name.to_string(), found: names.into_iter().cloned().collect() }
    })?;
    let values = pollster::block_on(crate::weights::read_tensor_f32(&source, entry))?;
    Ok((entry.shape.clone(), values))
}

/// Loads a whole diffusers Stable Diffusion folder (`tokenizer/`, `text_encoder/`, `unet/`,
/// `vae/`, `scheduler/`) or single file onto `device`. `variant` picks `*.<variant>.safetensors`.
pub fn load_stable_diffusion(model_dir: &Path, variant: Option<&str>, device: &Device) -> Result<StableDiffusion, Error> {
    load_stable_diffusion_with(model_dir, variant, device, WeightStorage::F32)
}

/// [`load_stable_diffusion`] with the weights kept as `storage` says (`F16`: half the memory,
/// f32 compute).
pub fn load_stable_diffusion_with(model_dir: &Path, variant: Option<&str>, device: &Device, storage: WeightStorage) -> Result<StableDiffusion, Error> {
    let opts = LoadOptions { variant: variant.map(str::to_string), storage, parts: Parts::All, ..LoadOptions::default() };
    load(model_dir, &SingleFileOptions::default(), &opts, device)?.into_full()
}
