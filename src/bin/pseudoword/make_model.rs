//! `pseudoword make-model`: a full-size model folder (or single file) with the public
//! repository's configs, the real CLIP tokenizer and random weights (see
//! `pseudoword::make_model`). Scripts rely on the flags and the final JSON line.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use pseudoword::error::Error;
use pseudoword::make_model::{Arch, MakeOptions, MakeProgress, make_model};

#[derive(Args)]
pub struct MakeModelArgs {
    /// sd15 | sd21 | sd21-base | sd-turbo | bk-sdm-small | bk-sdm-tiny
    #[arg(long)]
    arch: Arch,
    /// Output folder (diffusers layout); with --single-file the `.safetensors` file, or a folder
    /// to put it in (a `tokenizer/` folder is written next to it).
    #[arg(long)]
    out: PathBuf,
    /// `fp16`: `*.fp16.safetensors` files with F16 weights.
    #[arg(long)]
    variant: Option<String>,
    /// One original-LDM checkpoint (`model.diffusion_model.*`, ...) instead of a diffusers folder.
    #[arg(long)]
    single_file: bool,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: MakeModelArgs) -> Result<(), Error> {
    let opts = MakeOptions { arch: a.arch, out: a.out, variant: a.variant, single_file: a.single_file, seed: a.seed, header_only: false };
    let mut started = Instant::now();
    let mut current = String::new();
    let mut shown = 0u64;
    let report = make_model(&opts, &mut |p: MakeProgress<'_>| {
        if p.file != current {
            current = p.file.to_string();
            started = Instant::now();
            shown = 0;
        }
        // weights files: a line per ~10 % and at the end; small files once
        let tenth = (p.total / 10).max(1);
        if p.done == p.total {
            if p.total > 1 << 20 {
                eprintln!("{}: {:.2} GB in {:.1} s", p.file, p.total as f64 / 1e9, started.elapsed().as_secs_f64());
            }
        } else if p.done / tenth > shown {
            shown = p.done / tenth;
            eprintln!("{}: {} %", p.file, p.done * 100 / p.total.max(1));
        }
    })?;
    println!("{}", serde_json::to_string(&report).expect("report serializes"));
    Ok(())
}
