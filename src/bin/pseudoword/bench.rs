//! `pseudoword bench generate`: real architectures with random weights, timings and memory.

use clap::{Args, Subcommand};
use pseudoword::bench::suppress::bench_suppress;
use pseudoword::bench::{Arch, bench_generate, bench_train};
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
    /// sd15 | sd21 | bk-sdm-tiny
    #[arg(long, default_value = "sd15")]
    arch: Arch,
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

pub fn run(cmd: BenchCommand) -> Result<(), Error> {
    let (BenchCommand::Train(a) | BenchCommand::Generate(a)) = &cmd;
    pseudoword::kernels::flash_attention::set_enabled(!a.no_flash_attention);
    match cmd {
        BenchCommand::Train(a) => {
            let (device, name) = select_device(a.device)?;
            let chunk = (a.query_chunk > 0).then_some(a.query_chunk);
            let report = bench_train(a.arch, a.size, a.steps, &device, name, chunk, !a.no_checkpointing, a.dtype)?;
            let steps = &report.step_seconds;
            // the first step includes one-time allocation; report the rest when there are more
            let timed = if steps.len() > 1 { &steps[1..] } else { &steps[..] };
            let mean = timed.iter().sum::<f64>() / timed.len().max(1) as f64;
            eprintln!(
                "train {:?} {}x{} on {} (checkpointing {}): {:.2} s per step (mean of {}), peak memory {:.2} GiB ({}), weights {:.2} GiB",
                a.arch,
                a.size,
                a.size,
                name,
                !a.no_checkpointing,
                mean,
                timed.len(),
                report.peak_memory_bytes as f64 / (1u64 << 30) as f64,
                report.memory_source,
                report.weight_bytes as f64 / (1u64 << 30) as f64
            );
            println!("{}", serde_json::to_string(&report).expect("report serializes"));
            Ok(())
        }
        BenchCommand::Generate(a) => {
            let (device, name) = select_device(a.device)?;
            let chunk = (a.query_chunk > 0).then_some(a.query_chunk);
            if a.suppress {
                let r = bench_suppress(a.arch, a.size, a.steps, a.run_steps, a.suppress_opt_iters, &device, name, chunk, a.dtype)?;
                eprintln!(
                    "{:?} {}x{} on {}: SuppressEOT costs {:.2}x plain generation over {} steps ({} with ITO x {} iterations; {:.2}x with SWR only)",
                    a.arch, a.size, a.size, name, r.cost_ratio, r.run_steps, r.run_ito_steps, r.opt_iters, r.cost_ratio_swr_only
                );
                println!("{}", serde_json::to_string(&r).expect("report serializes"));
                return Ok(());
            }
            let report = bench_generate(a.arch, a.size, a.steps, &device, name, chunk, a.dtype)?;
            let steps = &report.unet_step_seconds;
            let mean = steps.iter().sum::<f64>() / steps.len().max(1) as f64;
            eprintln!(
                "{:?} {}x{} on {}: {:.2} s per UNet step (mean of {}), VAE decode {:.2} s, peak memory {:.2} GiB ({}), flash-attention kernel launches {}",
                a.arch,
                a.size,
                a.size,
                name,
                mean,
                steps.len(),
                report.vae_decode_seconds,
                report.peak_memory_bytes as f64 / (1u64 << 30) as f64,
                report.memory_source,
                report.flash_attention_launches
            );
            println!("{}", serde_json::to_string(&report).expect("report serializes"));
            Ok(())
        }
    }
}
