//! `pseudoword train`: textual inversion from photos (or a `--replay` recording), one JSON line
//! per optimizer step on stdout (`{"step": k, "loss": x, ...}`), progress notes on stderr,
//! checkpoints / previews / the embedding file on disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use pseudoword::embedding_files::{A1111Meta, EmbeddingFormat, write_embedding};
use pseudoword::error::Error;
use pseudoword::native::{select_device};
use pseudoword::pipeline::png_out::{A1111Parameters, a1111_sampler, encode_png, to_rgb8};
use pseudoword::pipeline::{GenerateParams, generate};
use pseudoword::train::{
    AdamWConfig, Checkpoint, DataSource, LatentCache, LrSchedule, OBJECT_TEMPLATES, PhotoError, ReplayData, RunConfig, STYLE_TEMPLATES,
    SamplerConfig, TextualInversionTrainer, TrainConfig, TrainingRun, prepare_photo,
};

use crate::{Common, read_f32};

#[derive(Clone, Copy, Debug, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Templates {
    /// "a photo of a {}", ... (an object or a person)
    Object,
    /// "a painting in the style of {}", ... (an art style)
    Style,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// Training photos: files and/or folders (JPEG, PNG, WebP). Not needed with --replay.
    #[arg(long, num_args = 1.., value_name = "DIR_OR_FILES")]
    pub images: Vec<PathBuf>,
    /// The new pseudo-word, e.g. `<my-cat>`.
    #[arg(long)]
    pub token: String,
    /// A single-token word close to the subject ("cat", "person", "sculpture"); the vectors start as its embedding.
    #[arg(long)]
    pub init_word: String,
    /// Vectors per token (more = more capacity, needs more steps).
    #[arg(long, default_value_t = 1)]
    pub vectors: usize,
    #[arg(long, value_enum, default_value_t = Templates::Object)]
    pub templates: Templates,
    /// Optimizer steps (default: 3000; with --replay: the recorded micro-batches / --grad-accum).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Learning rate (not scaled by batch or accumulation).
    #[arg(long, default_value_t = 5e-3)]
    pub lr: f64,
    /// Linear warm-up of the learning rate over this many steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Training resolution in pixels (default: the model's native size).
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Probability of training on the mirrored photo.
    #[arg(long, default_value_t = 0.5)]
    pub flip_p: f64,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the embedding and a checkpoint (`OUT_STEM.checkpoint.safetensors`) every N steps.
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Write a preview image (`OUT_STEM.preview-STEP.png`, fixed prompt and seed) every N steps.
    #[arg(long)]
    pub preview_every: Option<u64>,
    /// Denoising steps of the preview images.
    #[arg(long, default_value_t = 25)]
    pub preview_steps: usize,
    /// Continue from a checkpoint written by --save-every (same model, token and vectors).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Replay recorded batches (safetensors: latents, noise, timesteps, input_ids) instead of sampling.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Also print the trained rows in every step's JSON line (`rows`, [n*D]).
    #[arg(long)]
    pub log_rows: bool,
    /// The embedding file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// diffusers | a1111 | a1111-pt | a1111-png (default: from --out's extension: .pt, .png, else diffusers).
    #[arg(long)]
    pub format: Option<EmbeddingFormat>,
    /// Weights variant, e.g. `fp16`.
    #[arg(long)]
    pub variant: Option<String>,
    /// Keep every UNet activation for backward instead of re-running modules (faster, much more memory).
    #[arg(long)]
    pub no_checkpointing: bool,
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// Files named by `--images` (folders: their image files, sorted).
fn photo_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for p in args {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| Error::Input(format!("cannot read folder {}: {e}", p.display())))?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().and_then(|x| x.to_str()).is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str())))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn with_suffix(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("embedding");
    out.with_file_name(format!("{stem}.{suffix}"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))
}

pub fn run(a: TrainArgs) -> Result<(), Error> {
    let format = a.format.unwrap_or_else(|| match a.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("pt") => EmbeddingFormat::A1111Pt,
        Some("png") => EmbeddingFormat::A1111Png,
        _ => EmbeddingFormat::Diffusers,
    });
    if a.batch == 0 || a.grad_accum == 0 {
        return Err(Error::Input("--batch and --grad-accum must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&a.flip_p) {
        return Err(Error::Input(format!("--flip-p must be in [0, 1] (got {})", a.flip_p)));
    }
    // read the cheap inputs before loading the model, so mistakes fail fast
    let replay = match &a.replay {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::Input(format!("cannot read replay file {}: {e}", p.display())))?;
            Some(ReplayData::from_safetensors(&bytes, &p.display().to_string())?)
        }
        None => None,
    };
    let resume = match &a.resume {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::Input(format!("cannot read checkpoint {}: {e}", p.display())))?;
            Some(Checkpoint::from_bytes(&bytes, &p.display().to_string())?)
        }
        None => None,
    };
    let (device, device_name) = select_device(a.common.device)?;
    let sd = a.common.load(a.variant.as_deref(), None, &device)?;
    let resolution = a.resolution.unwrap_or(sd.default_size() as u32);
    let photos = if replay.is_none() {
        let files = photo_files(&a.images)?;
        if files.is_empty() {
            return Err(PhotoError::NoPhotos.into());
        }
        let mut photos = Vec::new();
        for f in &files {
            let name = f.display().to_string();
            let bytes = std::fs::read(f).map_err(|e| Error::Input(format!("cannot read {name}: {e}")))?;
            photos.push(prepare_photo(&bytes, &name, resolution)?);
        }
        photos
    } else {
        Vec::new()
    };
    let config = TrainConfig {
        learning_rate: a.lr,
        adamw: AdamWConfig { weight_decay: a.weight_decay, ..AdamWConfig::default() },
        gradient_accumulation_steps: a.grad_accum,
        lr_schedule: if a.warmup > 0 { LrSchedule::ConstantWithWarmup { warmup_steps: a.warmup } } else { LrSchedule::Constant },
        gradient_checkpointing: !a.no_checkpointing,
    };
    let trainer = pollster::block_on(TextualInversionTrainer::new(sd, &a.token, &a.init_word, a.vectors, config))?;
    let templates: Vec<String> =
        match a.templates { Templates::Object => OBJECT_TEMPLATES, Templates::Style => STYLE_TEMPLATES }.iter().map(|s| s.to_string()).collect();
    let t0 = Instant::now();
    let (data, steps) = match replay {
        Some(r) => {
            let recorded = (r.len() / a.grad_accum) as u64;
            let steps = a.steps.unwrap_or(recorded);
            if steps > recorded {
                return Err(Error::Input(format!(
                    "--steps {steps} needs {} micro-batches but the replay file holds {}",
                    steps * a.grad_accum as u64,
                    r.len()
                )));
            }
            (DataSource::Replay(r), steps)
        }
        None => {
            let cache = LatentCache::encode(&trainer.model().vae, &photos, a.flip_p > 0.0)?;
            let sampler = SamplerConfig {
                seed: a.seed,
                templates: templates.clone(),
                placeholder_string: trainer.placeholder_string(),
                batch_size: a.batch,
                flip_p: a.flip_p,
                num_train_timesteps: trainer.num_train_timesteps(),
            };
            eprintln!("encoded {} photo(s) at {resolution}x{resolution} ({:.1} s)", photos.len(), t0.elapsed().as_secs_f64());
            (DataSource::Sampled { cache, sampler }, a.steps.unwrap_or(3000))
        }
    };
    let settings = serde_json::json!({
        "model": trainer.model().name, "token": a.token, "init_word": a.init_word, "vectors": a.vectors,
        "templates": a.templates, "lr": a.lr, "warmup": a.warmup, "weight_decay": a.weight_decay,
        "resolution": resolution, "flip_p": a.flip_p, "batch": a.batch, "grad_accum": a.grad_accum, "seed": a.seed,
        "replay": a.replay.as_ref().map(|p| p.display().to_string()),
    });
    let run_config = RunConfig { checkpoint_every: a.save_every.unwrap_or(100), settings: settings.clone(), ..RunConfig::default() };
    let mut run = TrainingRun::new(trainer, data, run_config);
    if let Some(ck) = resume {
        for key in ["seed", "batch", "grad_accum", "resolution", "templates", "vectors", "token"] {
            if ck.info.settings.get(key) != settings.get(key) {
                eprintln!("note: the checkpoint was trained with {key} = {} (now {})", ck.info.settings[key], settings[key]);
            }
        }
        run.resume(ck)?;
        eprintln!("resumed at step {} (lr scale {})", run.step_count(), run.lr_scale());
    }
    let model_name = run.trainer.model().name.clone();
    let save_embedding = |run: &TrainingRun, rows_step: u64, rows: Option<&pseudoword::train::TrainerState>| -> Result<(), Error> {
        let mut emb = run.trainer.learned_embedding();
        if let Some(s) = rows {
            emb.vectors = s.rows.clone();
        }
        let meta = A1111Meta { name: Some(a.token.clone()), step: Some(rows_step as i64), sd_checkpoint: None, sd_checkpoint_name: Some(model_name.clone()) };
        write_atomic(&a.out, &write_embedding(&emb, format, &meta))
    };
    let checkpoint_path = with_suffix(&a.out, "checkpoint.safetensors");
    let started = Instant::now();
    let first_step = run.step_count();
    while run.step_count() < steps {
        let log = match pollster::block_on(run.step()) {
            Ok(log) => log,
            Err(e) => {
                // keep what was trained: the last good checkpoint and its embedding
                let good = run.last_good().clone();
                write_atomic(&checkpoint_path, &good.to_bytes())?;
                save_embedding(&run, good.info.step, Some(&good.state))?;
                eprintln!("saved the last good state (step {}) to {} and {}", good.info.step, a.out.display(), checkpoint_path.display());
                return Err(e.into());
            }
        };
        let k = log.step;
        let done = (k - first_step).max(1) as f64;
        let elapsed = started.elapsed().as_secs_f64();
        let eta = elapsed / done * steps.saturating_sub(k) as f64;
        let mut line = serde_json::json!({
            "step": k, "loss": log.loss, "lr": log.lr, "grad_norm": log.grad_norm, "timesteps": log.timesteps,
            "micro_losses": log.micro_losses, "row_norms": log.row_norms,
            "elapsed_s": (elapsed * 1000.0).round() / 1000.0, "eta_s": (eta * 10.0).round() / 10.0,
        });
        if let Some(rb) = &log.rollback {
            line["rollback"] = serde_json::to_value(rb).unwrap_or_default();
            eprintln!("step diverged ({}); rolled back to step {} with learning rate x{}", rb.reason, rb.to_step, rb.lr_scale);
        }
        if a.log_rows {
            line["rows"] = serde_json::json!(run.trainer.rows());
        }
        if log.rollback.is_none() {
            if a.save_every.is_some_and(|n| n > 0 && k.is_multiple_of(n)) {
                write_atomic(&checkpoint_path, &run.checkpoint().to_bytes())?;
                save_embedding(&run, k, None)?;
                line["saved"] = serde_json::json!([a.out.display().to_string(), checkpoint_path.display().to_string()]);
            }
            if a.preview_every.is_some_and(|n| n > 0 && k.is_multiple_of(n)) {
                let path = with_suffix(&a.out, &format!("preview-{k:05}.png"));
                preview(&mut run, &templates[0], a.seed, a.preview_steps, &path)?;
                line["preview"] = serde_json::json!(path.display().to_string());
            }
        }
        println!("{line}");
    }
    save_embedding(&run, run.step_count(), None)?;
    write_atomic(&checkpoint_path, &run.checkpoint().to_bytes())?;
    eprintln!(
        "{}",
        serde_json::json!({
            "out": a.out.display().to_string(), "format": format.name(), "checkpoint": checkpoint_path.display().to_string(),
            "steps": run.step_count(), "tokens": run.trainer.placeholder_tokens(), "device": device_name,
            "seconds": t0.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Generates the preview image for the current rows.
fn preview(run: &mut TrainingRun, template: &str, seed: u64, steps: usize, path: &Path) -> Result<(), Error> {
    run.trainer.write_rows_to_text_encoder();
    let sd = run.trainer.model();
    let mut p = GenerateParams::new(template.replace("{}", &run.trainer.placeholder_string()), sd);
    p.seed = seed;
    p.steps = steps;
    let out = generate(sd, &p, None, &mut |_, _, _| true)?;
    let [_, h, w, _] = out.image.dims();
    let rgb = to_rgb8(&read_f32(out.image)?);
    let kind = p.scheduler.unwrap_or(sd.default_scheduler);
    let params = A1111Parameters {
        prompt: p.prompt.clone(),
        negative_prompt: String::new(),
        steps,
        sampler: a1111_sampler(kind).into(),
        cfg_scale: p.guidance,
        seed,
        width: w,
        height: h,
        model: sd.name.clone(),
        extra: vec![],
    };
    let file = std::fs::File::create(path).map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
    encode_png(&rgb, w, h, &params.to_text(), std::io::BufWriter::new(file)).map_err(|e| Error::Input(format!("cannot encode {}: {e}", path.display())))
}
