//! `pseudoword train`: textual inversion from photos (or a `--replay` recording), one JSON line
//! per optimizer step on stdout (`{"step": k, "loss": x, ...}`), progress notes on stderr,
//! checkpoints / previews / the embedding file on disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use pseudoword::embedding_files::{A1111Meta, EmbeddingFormat, write_embedding};
use pseudoword::error::{Error, InputError};
use pseudoword::jobs::{StartedTraining, TrainData, TrainSettings, start_training, training_preview};
use pseudoword::native::select_device;
use pseudoword::pipeline::png_out::{encode_png, to_rgb8};
use pseudoword::train::{Checkpoint, PhotoError, ReplayData, TrainingRun, prepare_photo};

use crate::{Common, read_f32};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// Training photos: files and/or folders (JPEG, PNG, WebP). Not needed with --replay.
    #[arg(long, num_args = 1.., value_name = "DIR_OR_FILES")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub train: TrainSettings,
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
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// Files named by `--images` (folders: their image files, sorted).
fn photo_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for p in args {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| InputError::file("read folder", p.display(), e))?;
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
        .map_err(|e| InputError::file("write", path.display(), e).into())
}

pub fn run(a: TrainArgs) -> Result<(), Error> {
    let format = a.format.unwrap_or_else(|| match a.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("pt") => EmbeddingFormat::A1111Pt,
        Some("png") => EmbeddingFormat::A1111Png,
        _ => EmbeddingFormat::Diffusers,
    });
    a.train.validate()?;
    // read the cheap inputs before loading the model, so mistakes fail fast
    let replay = match &a.replay {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| InputError::file("read replay file", p.display(), e))?;
            Some(ReplayData::from_safetensors(&bytes, &p.display().to_string())?)
        }
        None => None,
    };
    let resume = match &a.resume {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| InputError::file("read checkpoint", p.display(), e))?;
            Some(Checkpoint::from_bytes(&bytes, &p.display().to_string())?)
        }
        None => None,
    };
    let (device, device_name) = select_device(a.common.device)?;
    let sd = a.common.load(a.variant.as_deref(), None, &device)?;
    let resolution = a.train.resolution(&sd);
    let preview_size = sd.default_size();
    let data = match replay {
        Some(r) => TrainData::Replay(r),
        None => {
            let files = photo_files(&a.images)?;
            if files.is_empty() {
                return Err(PhotoError::NoPhotos.into());
            }
            let mut photos = Vec::new();
            for f in &files {
                let name = f.display().to_string();
                let bytes = std::fs::read(f).map_err(|e| InputError::file("read", &name, e))?;
                photos.push(prepare_photo(&bytes, &name, resolution)?);
            }
            eprintln!("encoding {} photo(s) at {resolution}x{resolution}", photos.len());
            TrainData::Photos(photos)
        }
    };
    let t0 = Instant::now();
    let extra = serde_json::json!({ "replay": a.replay.as_ref().map(|p| p.display().to_string()) });
    let resume_settings = resume.as_ref().map(|ck| ck.info.settings.clone());
    let StartedTraining { mut run, steps, preview_prompt } = pollster::block_on(start_training(sd, &a.train, data, None, extra))?;
    if let (Some(ck), Some(old)) = (resume, resume_settings) {
        let settings = run.config().settings.clone();
        for key in ["seed", "batch", "grad_accum", "resolution", "templates", "vectors", "token"] {
            if old.get(key) != settings.get(key) {
                eprintln!("note: the checkpoint was trained with {key} = {} (now {})", old[key], settings[key]);
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
        let meta = A1111Meta { name: Some(a.train.token.clone()), step: Some(rows_step as i64), sd_checkpoint: None, sd_checkpoint_name: Some(model_name.clone()) };
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
            if a.train.checkpoint_every.is_some_and(|n| n > 0 && k.is_multiple_of(n)) {
                write_atomic(&checkpoint_path, &run.checkpoint().to_bytes())?;
                save_embedding(&run, k, None)?;
                line["saved"] = serde_json::json!([a.out.display().to_string(), checkpoint_path.display().to_string()]);
            }
            if a.preview_every.is_some_and(|n| n > 0 && k.is_multiple_of(n)) {
                let path = with_suffix(&a.out, &format!("preview-{k:05}.png"));
                preview(&mut run, &preview_prompt, preview_size, a.train.seed, a.preview_steps, &path)?;
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

/// Writes the preview image for the current rows.
fn preview(run: &mut TrainingRun, prompt: &str, size: usize, seed: u64, steps: usize, path: &Path) -> Result<(), Error> {
    let (image, params) = training_preview(run, prompt, size, steps, seed)?;
    let [_, h, w, _] = image.dims();
    let rgb = to_rgb8(&read_f32(image)?);
    let file = std::fs::File::create(path).map_err(|e| InputError::file("write", path.display(), e))?;
    encode_png(&rgb, w, h, &params.to_text(), std::io::BufWriter::new(file)).map_err(|e| InputError::file("encode", path.display(), e).into())
}
