//! `pseudoword generate`: text to image, PNG with A1111 parameters, optional tensors.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use clap::Args;
use pseudoword::error::{Error, InputError};
use pseudoword::jobs::{GenerateSettings, Generation, SuppressSettings};
use pseudoword::native::{read_f32_tensor, select_device};
use pseudoword::pipeline::png_out::{A1111Parameters, encode_png, to_rgb8};
use pseudoword::pipeline::run_to_end;
use safetensors::Dtype;

use crate::{Common, add_embeddings, read_f32, write_safetensors};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub settings: GenerateSettings,
    /// safetensors file with `latents` [N,4,H/8,W/8]: the initial noise before init_noise_sigma scaling.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// Weights variant, e.g. `fp16` (`*.fp16.safetensors`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Output PNG (with N > 1: NAME-0.png, NAME-1.png, ...).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write `image` F32 [N,H,W,3] in [0,1] and `latents` (final) to this safetensors file.
    #[arg(long)]
    pub out_tensor: Option<PathBuf>,
    /// Write per-token cross-attention heatmaps (averaged over the steps) to this folder:
    /// NN-TOKEN.png overlays, strip.png and maps.json (with --suppress: original/ and suppressed/).
    #[arg(long, value_name = "DIR")]
    pub attention_maps: Option<PathBuf>,
    #[command(flatten)]
    pub suppress: SuppressSettings,
}

fn numbered(path: &Path, i: usize, n: usize) -> PathBuf {
    if n == 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("png");
    path.with_file_name(format!("{stem}-{i}.{ext}"))
}

pub fn run(a: GenerateArgs) -> Result<(), Error> {
    let (device, device_name) = select_device(a.common.device)?;
    let mut sd = a.common.load(a.variant.as_deref(), a.settings.prediction_type, &device)?;
    add_embeddings(&mut sd.prompt, &a.common.embeddings)?;
    let latents = match &a.latents {
        Some(path) => {
            let (shape, values) = read_f32_tensor(path, "latents")?;
            let dims: [usize; 4] = shape
                .clone()
                .try_into()
                .map_err(|_| InputError::setting("latents", format!("{}: `latents` must have 4 dimensions, has shape {shape:?}", path.display())))?;
            Some(Tensor::<4>::from_data(TensorData::new(values, dims), &device))
        }
        None => None,
    };
    let t0 = std::time::Instant::now();
    let random_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64 % 4_294_967_296);
    let mut job = pollster::block_on(Generation::start(&sd, &a.settings, &a.suppress, a.attention_maps.is_some(), latents, random_seed))?;
    let mut last = std::time::Instant::now();
    pollster::block_on(run_to_end(&mut job, &sd, &mut |done, total, _| {
        eprintln!("step {done}/{total} ({:.2} s)", last.elapsed().as_secs_f64());
        last = std::time::Instant::now();
        true
    }))?;
    let out = job.finish(&sd)?;
    let [n, h, w, c] = out.image.dims();
    let image = read_f32(out.image)?;
    let params = &out.parameters;
    let write_pngs = |image: &[f32], base: &Path, params: &A1111Parameters| -> Result<Vec<String>, Error> {
        let mut written = vec![];
        for i in 0..n {
            let path = numbered(base, i, n);
            let rgb = to_rgb8(&image[i * h * w * c..(i + 1) * h * w * c]);
            let file = std::fs::File::create(&path).map_err(|e| InputError::file("write", path.display(), e))?;
            encode_png(&rgb, w, h, &params.to_text(), std::io::BufWriter::new(file)).map_err(|e| InputError::file("encode", path.display(), e))?;
            written.push(path.display().to_string());
        }
        Ok(written)
    };
    let written = write_pngs(&image, &a.out, params)?;
    let original = match &out.original {
        Some(o) => Some(read_f32(o.clone())?),
        None => None,
    };
    let mut original_json = None;
    if let (Some(original), Some(tokens)) = (&original, &out.tokens) {
        let stem = a.out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        let ext = a.out.extension().and_then(|s| s.to_str()).unwrap_or("png");
        let base = a.out.with_file_name(format!("{stem}-original.{ext}"));
        let plain = params.plain();
        let files = write_pngs(original, &base, &plain)?;
        original_json = Some(serde_json::json!({ "original": files, "target_positions": tokens.target }));
    }
    let mut maps_json = None;
    if let Some(dir) = &a.attention_maps {
        let branches = out
            .heatmaps
            .into_iter()
            .map(|(sub, acc)| {
                let rgb = match (sub, &original) {
                    (Some("original"), Some(o)) => o.clone(),
                    _ => image.clone(),
                };
                (sub, acc, rgb)
            })
            .collect();
        crate::heatmaps::write_branches(dir, &sd, &out.params.prompt, branches, [w, h])?;
        maps_json = Some(dir.display().to_string());
    }
    if let Some(t) = &a.out_tensor {
        let ld = out.latents.dims();
        let latents = read_f32(out.latents)?;
        write_safetensors(
            t,
            &[
                ("image".into(), Dtype::F32, vec![n, h, w, c], crate::f32_bytes(&image)),
                ("latents".into(), Dtype::F32, ld.to_vec(), crate::f32_bytes(&latents)),
            ],
        )?;
    }
    let mut json = serde_json::json!({
        "out": written,
        "seed": out.params.seed,
        "scheduler": params.sampler,
        "steps": out.num_steps,
        "size": [w, h],
        "device": device_name,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    if let Some(o) = original_json {
        json["suppress"] = o;
    }
    if let Some(d) = maps_json {
        json["attention_maps"] = d.into();
    }
    println!("{json}");
    Ok(())
}
