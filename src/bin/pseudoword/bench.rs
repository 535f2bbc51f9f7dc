//! `pseudoword bench generate|train`: a model loaded through the real loading path (any folder
//! with `--model`, else the `--arch` folder `make-model` writes once into a cache), timings and
//! memory.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use pseudoword::bench::suppress::bench_suppress;
use pseudoword::bench::{Arch, BenchModel, bench_generate, bench_train, validate_size};
use pseudoword::error::Error;
use pseudoword::weights::WeightStorage;
use pseudoword::native::{DeviceChoice, select_device};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time UNet steps (CFG batch of 2) and the VAE decode at a given size; prints one JSON object.
    Generate(BenchGenerate),
    /// Time textual-inversion training steps (forward + backward to the row) at a given size; prints one JSON object.
    Train(BenchGenerate),
}

#[derive(Args)]
pub struct BenchGenerate {
    /// sd15 | sd21 | sd21-base | sd-turbo | bk-sdm-small | bk-sdm-tiny: the architecture's model,
    /// made once with `make-model` into `$PSEUDOWORD_MODELS/<arch>[-fp16]` (default
    /// `~/.cache/pseudoword/models`) and reused.
    #[arg(long, default_value = "sd15")]
    arch: Arch,
    /// Bench this model folder (or single-file checkpoint) instead of `--arch`'s.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Weights variant to load (`fp16`: `*.fp16.safetensors`; with `--arch`, the fp16 folder is made).
    #[arg(long)]
    variant: Option<String>,
    /// Image size in pixels (square).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// UNet steps (generate) or training steps (train).
    #[arg(long, default_value_t = 2)]
    steps: usize,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Weight storage f32 | f16 (f16: half the memory; compute stays f32; on wgpu needs f16 buffer support).
    #[arg(long, default_value = "f32")]
    dtype: WeightStorage,
    /// Queries per attention chunk (memory-efficient attention); 0 = unchunked.
    #[arg(long, default_value_t = pseudoword::models::DEFAULT_QUERY_CHUNK_SIZE)]
    query_chunk: usize,
    /// Attention without the WGSL flash-attention kernel (the plain-burn query-chunked path),
    /// to compare the two on wgpu.
    #[arg(long)]
    no_flash_attention: bool,
    /// train: keep every UNet activation instead of re-running modules during backward.
    #[arg(long)]
    no_checkpointing: bool,
    /// Time SuppressEOT instead (plain, SWR-only and ITO steps, `--steps` of each) and report
    /// the cost ratio of a suppressed run to a plain one.
    #[arg(long)]
    suppress: bool,
    /// ITO iterations per step (with --suppress).
    #[arg(long, default_value_t = 10, requires = "suppress")]
    suppress_opt_iters: usize,
    /// Length of the run the cost ratio is for (with --suppress).
    #[arg(long, default_value_t = 50, requires = "suppress")]
    run_steps: usize,
}

/// The model of a bench: `--model`, else `--arch`'s cached folder (made when missing).
fn model(a: &BenchGenerate) -> Result<BenchModel, Error> {
    validate_size(a.size)?;
    match &a.model {
        Some(path) => Ok(BenchModel::folder(path, a.variant.as_deref())),
        None => BenchModel::arch(a.arch, a.variant.as_deref()),
    }
}

pub fn run(cmd: BenchCommand) -> Result<(), Error> {
    let (BenchCommand::Train(a) | BenchCommand::Generate(a)) = &cmd;
    pseudoword::kernels::flash_attention::set_enabled(!a.no_flash_attention);
    match cmd {
        BenchCommand::Train(a) => {
            let (device, name) = select_device(a.device)?;
            let chunk = (a.query_chunk > 0).then_some(a.query_chunk);
            let report = bench_train(&model(&a)?, a.size, a.steps, &device, name, chunk, !a.no_checkpointing, a.dtype)?;
            let steps = &report.step_seconds;
            // the first step includes one-time allocation; report the rest when there are more
            let timed = if steps.len() > 1 { &steps[1..] } else { &steps[..] };
            let mean = timed.iter().sum::<f64>() / timed.len().max(1) as f64;
            eprintln!(
                "train {} {}x{} on {} (checkpointing {}): {:.2} s per step (mean of {}), peak memory {:.2} GiB ({}), weights {:.2} GiB, load {:.1} s",
                report.arch,
                a.size,
                a.size,
                name,
                !a.no_checkpointing,
                mean,
                timed.len(),
                report.peak_memory_bytes as f64 / (1u64 << 30) as f64,
                report.memory_source,
                report.weight_bytes as f64 / (1u64 << 30) as f64,
                report.load_seconds
            );
            println!("{}", serde_json::to_string(&report).expect("report serializes"));
            Ok(())
        }
        BenchCommand::Generate(a) => {
            let (device, name) = select_device(a.device)?;
            let chunk = (a.query_chunk > 0).then_some(a.query_chunk);
            let m = model(&a)?;
            if a.suppress {
                let r = bench_suppress(&m, a.size, a.steps, a.run_steps, a.suppress_opt_iters, &device, name, chunk, a.dtype)?;
                eprintln!(
                    "{} {}x{} on {}: SuppressEOT costs {:.2}x plain generation over {} steps ({} with ITO x {} iterations; {:.2}x with SWR only)",
                    r.arch, a.size, a.size, name, r.cost_ratio, r.run_steps, r.run_ito_steps, r.opt_iters, r.cost_ratio_swr_only
                );
                println!("{}", serde_json::to_string(&r).expect("report serializes"));
                return Ok(());
            }
            let report = bench_generate(&m, a.size, a.steps, &device, name, chunk, a.dtype)?;
            let steps = &report.unet_step_seconds;
            let mean = steps.iter().sum::<f64>() / steps.len().max(1) as f64;
            eprintln!(
                "{} {}x{} on {}: {:.2} s per UNet step (mean of {}), VAE decode {:.2} s, peak memory {:.2} GiB ({}), flash-attention kernel launches {}, load {:.1} s",
                report.arch,
                a.size,
                a.size,
                name,
                mean,
                steps.len(),
                report.vae_decode_seconds,
                report.peak_memory_bytes as f64 / (1u64 << 30) as f64,
                report.memory_source,
                report.flash_attention_launches,
                report.load_seconds
            );
            println!("{}", serde_json::to_string(&report).expect("report serializes"));
            Ok(())
        }
    }
}
