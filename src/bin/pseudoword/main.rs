//! The native command line: `pseudoword tokenize | encode` (see README "CLI"). The output
//! formats are relied on by scripts: keep them stable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::{Device, Tensor};
use clap::{Args, Parser, Subcommand};

/// mimalloc instead of the system allocator: the CPU backend allocates and frees many
/// activation-sized buffers per step; glibc returns large ones to the OS every time (a page
/// fault per 4 KiB on the next use). Measured on the tiny ITO pass: 9.4 s -> 6.0 s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod convert;
mod edit;
mod generate;
mod heatmaps;
mod make_model;
mod train;
mod suppress;
use pseudoword::error::Error;
use pseudoword::native::{DeviceChoice, parse_embedding_arg, read_embedding_file, select_device};
use pseudoword::pipeline::{PromptEncoder, StableDiffusion, Tokenized};
use pseudoword::schedulers::PredictionType;
use pseudoword::loader::{LoadOptions, Loaded, Parts};
use pseudoword::native::SingleFileOptions;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

#[derive(Parser)]
#[command(name = "pseudoword", version, about = "Stable Diffusion personalization on your own GPU (native CLI)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub(crate) struct Common {
    /// Model folder in diffusers layout (tokenizer/, text_encoder/, ...), or a single-file
    /// checkpoint (`.safetensors` with original LDM keys, as AUTOMATIC1111/ComfyUI use).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Tokenizer folder for a single-file checkpoint (default: `tokenizer/` next to the file).
    #[arg(long, value_name = "DIR")]
    pub(crate) tokenizer: Option<PathBuf>,
    /// For a single-file checkpoint: a diffusers folder whose unet/vae/text_encoder/scheduler
    /// configs (and tokenizer/) are used instead of inferring them from the weights.
    #[arg(long, value_name = "DIR")]
    pub(crate) config: Option<PathBuf>,
    /// Textual-inversion embedding file, `PATH[=TOKEN]` (repeatable).
    #[arg(long = "embedding", value_name = "FILE[=TOKEN]")]
    pub(crate) embeddings: Vec<String>,
    /// Compute device: cpu, wgpu, or auto (wgpu when an adapter exists, else cpu).
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceChoice,
    /// Weight storage on the device: f32, or f16 (matrices in f16: half the memory; compute stays f32).
    #[arg(long, default_value = "f32")]
    pub(crate) storage: pseudoword::weights::WeightStorage,
}

#[derive(Subcommand)]
enum Command {
    /// Text to image: writes a PNG with AUTOMATIC1111 `parameters` (and optionally tensors).
    Generate(Box<generate::GenerateArgs>),
    /// SuppressEOT on a photo: DDIM + null-text inversion, then suppress words of the prompt; writes the edit and the reconstruction.
    Edit(Box<edit::EditArgs>),
    /// Textual inversion: learn a pseudo-word from photos (or replay recorded batches); one JSON line per step.
    Train(Box<train::TrainArgs>),
    /// Convert a textual-inversion embedding between diffusers and AUTOMATIC1111 formats; prints one JSON line.
    ConvertEmbedding(convert::ConvertEmbeddingArgs),
    /// Write a full-size model (public configs, real tokenizer, random weights) as a diffusers folder or single file; prints one JSON line.
    MakeModel(make_model::MakeModelArgs),
    /// Benchmarks with real architectures and random weights.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Tokenize a prompt like the pipeline does; prints one JSON object.
    Tokenize {
        #[command(flatten)]
        common: Common,
        /// The prompt.
        prompt: String,
    },
    /// Encode a prompt with the text encoder; writes `last_hidden_state` F32 [1, 77, D].
    Encode {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        prompt: String,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Weights variant: `fp16` loads `model.fp16.safetensors` (computed in f32).
        #[arg(long)]
        variant: Option<String>,
        /// Also write `hidden_states` F32 [layers+1, 1, 77, D] (embedding output + every layer).
        #[arg(long)]
        all_hidden_states: bool,
        #[command(flatten)]
        suppress: suppress::EncodeSuppress,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli_message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The flag for a setting's field name (`num_images` -> `--num-images`).
fn flag(setting: &str) -> String {
    match setting {
        "suppress" => "--suppress WORDS".into(),
        "checkpoint_every" => "--save-every".into(),
        s => format!("--{}", s.replace('_', "-")),
    }
}

/// The library's message with the CLI's flag for its remedy: settings named by field names
/// (`num_images ...`) start with the flag instead; other remedies get the flag appended.
fn cli_message(e: &Error) -> String {
    use pseudoword::error::{InputError, Remedy};
    if let Error::Input(InputError::Setting { setting, reason }) = e {
        return format!("{} {reason}", flag(setting));
    }
    let hint = match e.remedy() {
        Some(Remedy::Tokenizer) => "pass it with --tokenizer DIR",
        Some(Remedy::Configs) => "pass them with --config DIR",
        Some(Remedy::Embedding) => "embeddings are loaded with --embedding FILE",
        Some(Remedy::EmbeddingToken) => "rename it with --embedding FILE=<name>",
        Some(Remedy::Cpu) => "or use --device cpu",
        Some(Remedy::Scheduler) => "e.g. --scheduler euler",
        Some(Remedy::Setting(_)) | None => return e.to_string(),
    };
    format!("{e} (CLI: {hint})")
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Tokenize { common, prompt } => tokenize(&common, &prompt),
        Command::Generate(args) => generate::run(*args),
        Command::Train(args) => train::run(*args),
        Command::Edit(args) => edit::run(*args),
        Command::Bench { what } => bench::run(what),
        Command::MakeModel(args) => make_model::run(args),
        Command::ConvertEmbedding(args) => convert::run(args),
        Command::Encode { common, prompt, out, variant, all_hidden_states, suppress } => {
            encode(&common, &prompt, &out, variant.as_deref(), all_hidden_states, &suppress)
        }
    }
}

impl Common {
    /// Where a single-file checkpoint's tokenizer and configs come from.
    pub(crate) fn single_file(&self, prediction_type: Option<PredictionType>) -> SingleFileOptions {
        SingleFileOptions { tokenizer: self.tokenizer.clone(), config: self.config.clone(), prediction_type }
    }

    fn options(&self, variant: Option<&str>, parts: Parts) -> LoadOptions {
        LoadOptions { storage: self.storage, variant: variant.map(str::to_string), parts, ..LoadOptions::default() }
    }

    /// Loads the model (folder or single file).
    pub(crate) fn load(&self, variant: Option<&str>, prediction_type: Option<PredictionType>, device: &Device) -> Result<StableDiffusion, Error> {
        pseudoword::native::load(&self.model, &self.single_file(prediction_type), &self.options(variant, Parts::All), device)?.into_full()
    }
}

fn tokenize(common: &Common, prompt: &str) -> Result<(), Error> {
    // Tokenizing needs no device or weights: only the embedding files' token counts.
    let mut tokenizer = pseudoword::native::load_tokenizer(&common.model, &common.single_file(None))?;
    for arg in &common.embeddings {
        let (path, token) = parse_embedding_arg(arg);
        let emb = read_embedding_file(&path, token.as_deref())?;
        let tokens = emb.tokens();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        tokenizer.add_tokens(&refs)?;
    }
    let t = Tokenized::new(&tokenizer, prompt);
    let json = serde_json::json!({
        "input_ids": t.input_ids,
        "tokens": t.tokens,
        "ids": t.ids,
        "converted_prompt": t.converted_prompt,
        "truncated": t.truncated,
        "bos_token_id": tokenizer.bos_id(),
        "eos_token_id": tokenizer.eos_id(),
        "pad_token_id": tokenizer.pad_id(),
    });
    println!("{json}");
    Ok(())
}

fn load_with_embeddings(common: &Common, variant: Option<&str>, device: &Device) -> Result<PromptEncoder, Error> {
    let loaded = pseudoword::native::load(&common.model, &common.single_file(None), &common.options(variant, Parts::TextEncoder), device)?;
    let mut enc = match loaded {
        Loaded::Text(e) => e,
        Loaded::Full(sd) => sd.prompt,
    };
    add_embeddings(&mut enc, &common.embeddings)?;
    Ok(enc)
}

/// Adds every `--embedding PATH[=TOKEN]` to the prompt encoder.
pub(crate) fn add_embeddings(enc: &mut PromptEncoder, args: &[String]) -> Result<(), Error> {
    for arg in args {
        let (path, token) = parse_embedding_arg(arg);
        let emb = read_embedding_file(&path, token.as_deref())?;
        enc.add_embedding(&path.display().to_string(), &emb)?;
    }
    Ok(())
}

pub(crate) fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, Error> {
    let data = pollster::block_on(t.into_data_async())
        .map_err(|e| pseudoword::error::DeviceError::Readback { reason: format!("{e:?}") })?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| pseudoword::error::DeviceError::Readback { reason: format!("{e:?}") }.into())
}

fn encode(common: &Common, prompt: &str, out: &Path, variant: Option<&str>, all_hidden: bool, sup: &suppress::EncodeSuppress) -> Result<(), Error> {
    let (device, device_name) = select_device(common.device)?;
    let enc = load_with_embeddings(common, variant, &device)?;
    let (toks, output) = enc.encode(&[prompt], all_hidden)?;
    let [b, s, d] = output.last_hidden_state.dims();
    let last = read_f32(output.last_hidden_state.clone())?;
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("last_hidden_state".into(), Dtype::F32, vec![b, s, d], f32_bytes(&last)),
        (
            "input_ids".into(),
            Dtype::I64,
            vec![1, s],
            toks[0].input_ids.iter().flat_map(|&i| (i as i64).to_le_bytes()).collect(),
        ),
    ];
    if all_hidden {
        let n = output.hidden_states.len();
        let stacked = Tensor::stack::<4>(output.hidden_states, 0).reshape([n * b, s, d]);
        blobs.push(("hidden_states".into(), Dtype::F32, vec![n, b, s, d], f32_bytes(&read_f32(stacked)?)));
    }
    let suppressed = suppress::encode_outputs(&enc, &toks[0], output.last_hidden_state, sup, &mut blobs)?;
    write_safetensors(out, &blobs)?;
    let mut json = serde_json::json!({
        "out": out.display().to_string(),
        "shape": [b, s, d],
        "device": device_name,
        "input_ids": toks[0].input_ids,
        "truncated": toks[0].truncated,
    });
    if let Some(s) = suppressed {
        json["suppress"] = s;
    }
    println!("{json}");
    Ok(())
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn write_safetensors(path: &Path, blobs: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Result<(), Error> {
    let io = |e: String| Error::from(pseudoword::error::InputError::file("write", path.display(), e));
    let views: HashMap<String, TensorView<'_>> = blobs
        .iter()
        .map(|(k, dt, shape, bytes)| Ok((k.clone(), TensorView::new(*dt, shape.clone(), bytes).map_err(|e| io(e.to_string()))?)))
        .collect::<Result<_, Error>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| io(e.to_string()))
}
