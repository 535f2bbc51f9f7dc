//! Full-size model files without a hub (`pseudoword make-model`): the public repositories'
//! diffusers folders (or original-LDM single files) with their real configs, the real CLIP
//! tokenizer and random weights of the real shapes, read by the same loaders users hit.
//!
//! - [`configs`]: every `config.json` as the public repositories have it (one file per purpose).
//! - [`writer`]: the safetensors header first (from the models' `param_specs`), then each tensor
//!   generated and streamed to the file in small chunks: memory never holds a tensor (SD 1.5 is
//!   4.3 GB in f32). Random values are seeded per parameter name, so a folder, its fp16 variant
//!   and the single file of the same seed hold the same numbers.
//! - [`ldm`]: the single-file layout, the inverse of `crate::weights::ldm`'s conversion.
//! - The cache the benches use: [`ensure_cached`] makes `<root>/<arch>[-fp16]` once
//!   (`$PSEUDOWORD_MODELS` or `~/.cache/pseudoword/models`) and reuses it when complete.
//!
//! Native only (files on disk).

pub mod configs;
pub mod ldm;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, InputError};
use crate::models::{AutoencoderKL, AutoencoderKLConfig, CLIPTextConfig, CLIPTextModel, UNet2DConditionConfig, UNet2DConditionModel};
use crate::weights::ParamSpec;
pub use writer::{FileDtype, Fill, ParamRng, Planned, random_weights};

/// The architectures `make-model` writes, each as its public repository has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// runwayml/stable-diffusion-v1-5.
    Sd15,
    /// stabilityai/stable-diffusion-2-1 (768-v: v-prediction, 768 px).
    Sd21,
    /// stabilityai/stable-diffusion-2-1-base (epsilon, 512 px).
    Sd21Base,
    /// stabilityai/sd-turbo (SD 2.1 architecture at 512 px, Euler with trailing timesteps).
    SdTurbo,
    /// nota-ai/bk-sdm-small (SD 1.x without the mid block, one layer per down stage).
    BkSdmSmall,
    /// nota-ai/bk-sdm-tiny (BK-SDM-Small without the innermost stage).
    BkSdmTiny,
}

impl Arch {
    pub const ALL: [Arch; 6] = [Self::Sd15, Self::Sd21, Self::Sd21Base, Self::SdTurbo, Self::BkSdmSmall, Self::BkSdmTiny];

    /// The name on the command line (`sd21-base`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd15 => "sd15",
            Self::Sd21 => "sd21",
            Self::Sd21Base => "sd21-base",
            Self::SdTurbo => "sd-turbo",
            Self::BkSdmSmall => "bk-sdm-small",
            Self::BkSdmTiny => "bk-sdm-tiny",
        }
    }

    /// The public repository whose layout and configs are reproduced.
    pub fn repository(self) -> &'static str {
        match self {
            Self::Sd15 => "runwayml/stable-diffusion-v1-5",
            Self::Sd21 => "stabilityai/stable-diffusion-2-1",
            Self::Sd21Base => "stabilityai/stable-diffusion-2-1-base",
            Self::SdTurbo => "stabilityai/sd-turbo",
            Self::BkSdmSmall => "nota-ai/bk-sdm-small",
            Self::BkSdmTiny => "nota-ai/bk-sdm-tiny",
        }
    }

    /// SD 2.x text encoder (OpenCLIP ViT-H, `!` padding).
    pub fn open_clip(self) -> bool {
        matches!(self, Self::Sd21 | Self::Sd21Base | Self::SdTurbo)
    }

    /// The single file's name as it is usually downloaded.
    pub fn single_file_stem(self) -> &'static str {
        match self {
            Self::Sd15 => "v1-5-pruned-emaonly",
            Self::Sd21 => "v2-1_768-ema-pruned",
            Self::Sd21Base => "v2-1_512-ema-pruned",
            Self::SdTurbo => "sd_turbo",
            Self::BkSdmSmall => "bk-sdm-small",
            Self::BkSdmTiny => "bk-sdm-tiny",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
            format!("unknown arch `{s}`: use {}", names.join(", "))
        })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A config as diffusers writes it: pretty-printed, keys sorted, a final newline.
pub fn config_text(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("json") + "\n"
}

/// The parsed configs and parameter specs of an architecture.
pub struct ArchSpecs {
    pub unet_config: UNet2DConditionConfig,
    pub vae_config: AutoencoderKLConfig,
    pub text_config: CLIPTextConfig,
    pub unet: Vec<ParamSpec>,
    pub vae: Vec<ParamSpec>,
    pub text_encoder: Vec<ParamSpec>,
}

/// Parameter counts of the three models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Parameters {
    pub unet: u64,
    pub vae: u64,
    pub text_encoder: u64,
}

fn count(specs: &[ParamSpec]) -> u64 {
    specs.iter().map(|s| s.shape.iter().product::<usize>() as u64).sum()
}

/// `unet/config.json` parsed for its parameter shapes. diffusers reads SD-Turbo's
/// `"upcast_attention": null` as false (it changes no shape); should the library's parser refuse
/// the null, the shapes are taken from the config without that key.
fn unet_config_for_specs(text: &str, file: &str) -> Result<UNet2DConditionConfig, Error> {
    let e = match UNet2DConditionConfig::from_json(text, file) {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(mut o)) if o.get("upcast_attention").is_some_and(|u| u.is_null()) => {
            o.remove("upcast_attention");
            Ok(UNet2DConditionConfig::from_json(&serde_json::Value::Object(o).to_string(), file)?)
        }
        _ => Err(e.into()),
    }
}

impl ArchSpecs {
    pub fn of(arch: Arch) -> Result<Self, Error> {
        let name = |c: &str| format!("{} {c}/config.json", arch.repository());
        let unet_config = unet_config_for_specs(&config_text(&configs::unet::config(arch)), &name("unet"))?;
        let vae_config = AutoencoderKLConfig::from_json(&config_text(&configs::vae::config(arch)), &name("vae"))?;
        let text_config = CLIPTextConfig::from_json(&config_text(&configs::text_encoder::config(arch)), &name("text_encoder"))?;
        Ok(Self {
            unet: UNet2DConditionModel::param_specs(&unet_config),
            vae: AutoencoderKL::param_specs(&vae_config),
            text_encoder: CLIPTextModel::param_specs(&text_config),
            unet_config,
            vae_config,
            text_config,
        })
    }

    pub fn parameters(&self) -> Parameters {
        Parameters { unet: count(&self.unet), vae: count(&self.vae), text_encoder: count(&self.text_encoder) }
    }
}

/// What to make.
#[derive(Clone, Debug)]
pub struct MakeOptions {
    pub arch: Arch,
    /// The model folder; with `single_file`, the `.safetensors` file or the folder to put it in.
    pub out: PathBuf,
    /// `fp16`: `*.fp16.safetensors` files with F16 tensors (a single file: all floats F16).
    pub variant: Option<String>,
    /// One original-LDM `.safetensors` (+ `tokenizer/` next to it) instead of a diffusers folder.
    pub single_file: bool,
    /// Seed of the random weights.
    pub seed: u64,
    /// Write every header but leave the tensor data a hole of zeros (sparse files of the real
    /// sizes): the real layout, keys, shapes and configs in milliseconds, for tests.
    pub header_only: bool,
}

impl MakeOptions {
    pub fn new(arch: Arch, out: impl Into<PathBuf>) -> Self {
        Self { arch, out: out.into(), variant: None, single_file: false, seed: 0, header_only: false }
    }

    fn dtype(&self) -> Result<FileDtype, Error> {
        match self.variant.as_deref() {
            None => Ok(FileDtype::F32),
            Some("fp16") => Ok(FileDtype::F16),
            Some(v) => Err(InputError::setting("variant", format!("must be fp16 (or absent), got `{v}`")).into()),
        }
    }
}

/// One file of the output.
pub enum Contents {
    Text(String),
    Tensors(Vec<Planned>),
}

/// A file to write: path relative to the output folder, and its contents.
pub struct OutFile {
    pub path: String,
    pub contents: Contents,
}

/// The output folder and the files to write in it.
pub fn plan(opts: &MakeOptions) -> Result<(PathBuf, Vec<OutFile>), Error> {
    let arch = opts.arch;
    let dtype = opts.dtype()?;
    let specs = ArchSpecs::of(arch)?;
    let text = |path: &str, v: serde_json::Value| OutFile { path: path.into(), contents: Contents::Text(config_text(&v)) };
    let mut files: Vec<OutFile> =
        configs::tokenizer::files(arch).into_iter().map(|(name, s)| OutFile { path: format!("tokenizer/{name}"), contents: Contents::Text(s) }).collect();
    if opts.single_file {
        let out = &opts.out;
        let (dir, name) = if out.extension().is_some_and(|e| e == "safetensors") {
            let name = out.file_name().and_then(|s| s.to_str()).unwrap_or("model.safetensors").to_string();
            (out.parent().map(Path::to_path_buf).unwrap_or_default(), name)
        } else {
            let suffix = if dtype == FileDtype::F16 { "-fp16" } else { "" };
            (out.clone(), format!("{}{suffix}.safetensors", arch.single_file_stem()))
        };
        let tensors = ldm::plan(&specs.unet, &specs.vae, &specs.text_encoder, &specs.text_config, arch.open_clip(), dtype);
        files.push(OutFile { path: name, contents: Contents::Tensors(tensors) });
        return Ok((dir, files));
    }
    let variant = opts.variant.as_deref().map(|v| format!(".{v}")).unwrap_or_default();
    files.push(text("model_index.json", configs::pipeline::model_index(arch)));
    files.push(text("scheduler/scheduler_config.json", configs::scheduler::config(arch)));
    files.push(text("text_encoder/config.json", configs::text_encoder::config(arch)));
    files.push(text("unet/config.json", configs::unet::config(arch)));
    files.push(text("vae/config.json", configs::vae::config(arch)));
    let random = |specs: &[ParamSpec], name: &dyn Fn(&str) -> String| -> Vec<Planned> {
        specs.iter().map(|s| Planned::random(name(&s.key), &s.key, &s.shape, dtype)).collect()
    };
    let mut te = random(&specs.text_encoder, &|k| k.to_string());
    if configs::text_encoder::has_position_ids(arch) {
        let n = specs.text_config.max_position_embeddings;
        te.push(Planned { name: "text_model.embeddings.position_ids".into(), dtype: FileDtype::I64, shape: vec![1, n], fill: Fill::Int((0..n as i64).collect()) });
    }
    files.push(OutFile { path: format!("text_encoder/model{variant}.safetensors"), contents: Contents::Tensors(te) });
    files.push(OutFile { path: format!("unet/diffusion_pytorch_model{variant}.safetensors"), contents: Contents::Tensors(random(&specs.unet, &|k| k.to_string())) });
    let legacy = configs::vae::legacy_attention_names(arch);
    let vae = random(&specs.vae, &|k| if legacy { legacy_vae_name(k) } else { k.to_string() });
    files.push(OutFile { path: format!("vae/diffusion_pytorch_model{variant}.safetensors"), contents: Contents::Tensors(vae) });
    Ok((opts.out.clone(), files))
}

/// diffusers < 0.15 names of the VAE mid-block attention (`AttentionBlock`): `query`, `key`,
/// `value`, `proj_attn` (what the SD 1.5 / 2.1 repositories' files still use).
pub fn legacy_vae_name(key: &str) -> String {
    for (new, old) in [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")] {
        for leaf in ["weight", "bias"] {
            if let Some(head) = key.strip_suffix(&format!(".{new}.{leaf}")) {
                return format!("{head}.{old}.{leaf}");
            }
        }
    }
    key.to_string()
}

/// What [`make_model`] wrote (the CLI's JSON line).
#[derive(Clone, Debug, Serialize)]
pub struct MakeReport {
    /// The folder, or the single file.
    pub out: String,
    pub arch: String,
    pub parameters: Parameters,
    /// Bytes of every file written.
    pub bytes: u64,
    pub seconds: f64,
}

/// Progress of [`make_model`]: after each tensor of a weights file, and once per small file.
#[derive(Clone, Copy, Debug)]
pub struct MakeProgress<'a> {
    /// Path relative to the output folder.
    pub file: &'a str,
    pub done: u64,
    pub total: u64,
}

fn io_err(action: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    InputError::file(action, path.display(), e).into()
}

/// Writes the model [`plan`] describes (see the module docs).
pub fn make_model(opts: &MakeOptions, progress: &mut dyn FnMut(MakeProgress<'_>)) -> Result<MakeReport, Error> {
    let t0 = Instant::now();
    let (dir, files) = plan(opts)?;
    let parameters = ArchSpecs::of(opts.arch)?.parameters();
    let mut bytes = 0;
    let mut out = dir.display().to_string();
    for f in &files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_err("create", parent, e))?;
        }
        match &f.contents {
            Contents::Text(s) => {
                std::fs::write(&path, s).map_err(|e| io_err("write", &path, e))?;
                bytes += s.len() as u64;
                progress(MakeProgress { file: &f.path, done: s.len() as u64, total: s.len() as u64 });
            }
            Contents::Tensors(plan) => {
                let mut report = |done, total| progress(MakeProgress { file: &f.path, done, total });
                bytes += writer::write(&path, plan, opts.seed, opts.header_only, &mut report).map_err(|e| io_err("write", &path, e))?;
                if opts.single_file {
                    out = path.display().to_string();
                }
            }
        }
    }
    Ok(MakeReport { out, arch: opts.arch.name().into(), parameters, bytes, seconds: t0.elapsed().as_secs_f64() })
}

/// Whether `dir` holds exactly what [`make_model`] writes for `opts` (text files equal, weights
/// files with a readable header and the planned size): an interrupted or outdated folder is not.
pub fn is_complete(opts: &MakeOptions) -> bool {
    let Ok((dir, files)) = plan(opts) else { return false };
    files.iter().all(|f| {
        let path = dir.join(&f.path);
        match &f.contents {
            Contents::Text(s) => std::fs::read_to_string(&path).is_ok_and(|t| t == *s),
            Contents::Tensors(plan) => {
                let Ok(source) = crate::weights::FileSource::open(&path) else { return false };
                let header = pollster::block_on(crate::weights::SafetensorsHeader::read(&source));
                header.is_ok_and(|h| h.tensors.len() == plan.len()) && std::fs::metadata(&path).is_ok_and(|m| m.len() == writer::file_size(plan))
            }
        }
    })
}

/// Where the benches keep made models: `$PSEUDOWORD_MODELS`, else `~/.cache/pseudoword/models`.
pub fn models_root() -> PathBuf {
    if let Some(p) = std::env::var_os("PSEUDOWORD_MODELS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/pseudoword/models")
}

/// `<models_root>/<arch>[-<variant>]`.
pub fn cached_dir(arch: Arch, variant: Option<&str>) -> PathBuf {
    models_root().join(match variant {
        Some(v) => format!("{}-{v}", arch.name()),
        None => arch.name().to_string(),
    })
}

/// The cached model folder of `arch` (seed 0), made first when absent or incomplete. Processes
/// making the same model wait for each other (a lock file); the folder appears whole (written
/// beside it, then renamed). Returns the folder and the report when it was made now.
pub fn ensure_cached(arch: Arch, variant: Option<&str>, progress: &mut dyn FnMut(MakeProgress<'_>)) -> Result<(PathBuf, Option<MakeReport>), Error> {
    let dir = cached_dir(arch, variant);
    let mut opts = MakeOptions::new(arch, &dir);
    opts.variant = variant.map(str::to_string);
    opts.dtype()?;
    if is_complete(&opts) {
        return Ok((dir, None));
    }
    let root = models_root();
    std::fs::create_dir_all(&root).map_err(|e| io_err("create", &root, e))?;
    let name = dir.file_name().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    let lock_path = root.join(format!(".{name}.lock"));
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| io_err("open", &lock_path, e))?;
    lock.lock().map_err(|e| io_err("lock", &lock_path, e))?;
    if is_complete(&opts) {
        return Ok((dir, None));
    }
    let partial = root.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let mut make = opts.clone();
    make.out = partial.clone();
    let mut report = make_model(&make, progress)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io_err("replace", &dir, e))?;
    }
    std::fs::rename(&partial, &dir).map_err(|e| io_err("rename", &partial, e))?;
    report.out = dir.display().to_string();
    drop(lock);
    Ok((dir, Some(report)))
}
