//! `pseudoword generate`: text to image, PNG with A1111 parameters, optional tensors.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use clap::Args;
use pseudoword::error::Error;
use pseudoword::native::{read_f32_tensor, select_device};
use pseudoword::pipeline::png_out::{A1111Parameters, a1111_sampler, encode_png, to_rgb8};
use pseudoword::pipeline::{GenerateParams, Generated, Txt2Img, decode_latents};
use pseudoword::suppress::SuppressTxt2Img;
use pseudoword::schedulers::{PredictionType, SchedulerKind, TimestepSpacing};
use safetensors::Dtype;

use crate::{Common, add_embeddings, read_f32, write_safetensors};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// ddim | pndm | euler | euler-a | dpm++2m | dpm++2m-karras | lms (default: the model's own)
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// leading | trailing | linspace (default: the scheduler's own / the model config's)
    #[arg(long)]
    pub timestep_spacing: Option<TimestepSpacing>,
    /// epsilon | v_prediction (default: the model config's)
    #[arg(long)]
    pub prediction_type: Option<PredictionType>,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale; <= 1 disables guidance (one UNet pass per step).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Seed of the initial noise (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image width (multiple of 8; default: the model's native size).
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Number of images (one batched run).
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
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
    pub suppress: crate::suppress::GenerateSuppress,
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
    let mut sd = a.common.load(a.variant.as_deref(), a.prediction_type, &device)?;
    add_embeddings(&mut sd.prompt, &a.common.embeddings)?;
    let mut p = GenerateParams::new(a.prompt.clone(), &sd);
    p.negative_prompt = a.negative_prompt.clone();
    p.steps = a.steps;
    p.guidance = a.guidance;
    p.seed = a.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64 % 4_294_967_296));
    p.width = a.width.unwrap_or(p.width);
    p.height = a.height.unwrap_or(p.height);
    p.num_images = a.num_images;
    p.scheduler = a.scheduler;
    p.overrides.timestep_spacing = a.timestep_spacing;
    p.overrides.prediction_type = a.prediction_type;
    let latents = match &a.latents {
        Some(path) => {
            let (shape, values) = read_f32_tensor(path, "latents")?;
            let dims: [usize; 4] = shape
                .clone()
                .try_into()
                .map_err(|_| Error::Input(format!("{}: `latents` must have 4 dimensions, has shape {shape:?}", path.display())))?;
            Some(Tensor::<4>::from_data(TensorData::new(values, dims), &device))
        }
        None => None,
    };
    let t0 = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut on_step = |done: usize, total: usize| {
        eprintln!("step {done}/{total} ({:.2} s)", last.elapsed().as_secs_f64());
        last = std::time::Instant::now();
        true
    };
    let suppress = a.suppress.params();
    let want_maps = a.attention_maps.is_some();
    let (out, original, heatmaps) = match &suppress {
        None => {
            let mut run = Txt2Img::new(&sd, &p, latents)?;
            if want_maps {
                run.enable_heatmaps(&sd)?;
            }
            let total = run.num_steps();
            while !run.is_done() {
                run.step(&sd)?;
                on_step(run.steps_done(), total);
            }
            let maps = run.heatmaps().map(|m| vec![(None, m.clone())]);
            let latents = run.latents();
            (Generated { image: decode_latents(&sd, latents.clone()), latents, num_steps: total }, None, maps)
        }
        Some(s) => {
            let mut run = pollster::block_on(SuppressTxt2Img::new(&sd, &p, s, latents))?;
            if want_maps {
                run.enable_heatmaps();
            }
            let total = run.num_steps();
            while !run.is_done() {
                pollster::block_on(run.step(&sd))?;
                on_step(run.steps_done(), total);
            }
            let maps = run.heatmaps().map(|(o, s)| vec![(Some("original"), o.clone()), (Some("suppressed"), s.clone())]);
            let n = p.num_images;
            let images = decode_latents(&sd, run.latents());
            let suppressed = run.latents().narrow(0, n, n);
            let out = Generated { image: images.clone().narrow(0, n, n), latents: suppressed, num_steps: total };
            (out, Some((images.narrow(0, 0, n), run.tokens().clone())), maps)
        }
    };
    let [n, h, w, c] = out.image.dims();
    let image = read_f32(out.image)?;
    let kind = p.scheduler.unwrap_or(sd.default_scheduler);
    let params = A1111Parameters {
        prompt: p.prompt.clone(),
        negative_prompt: p.negative_prompt.clone(),
        steps: p.steps,
        sampler: a1111_sampler(kind).into(),
        cfg_scale: p.guidance,
        seed: p.seed,
        width: w,
        height: h,
        model: sd.name.clone(),
        extra: suppress.as_ref().map(crate::suppress::GenerateSuppress::png_extra).unwrap_or_default(),
    };
    let write_pngs = |image: &[f32], base: &Path, params: &A1111Parameters| -> Result<Vec<String>, Error> {
        let mut written = vec![];
        for i in 0..n {
            let path = numbered(base, i, n);
            let rgb = to_rgb8(&image[i * h * w * c..(i + 1) * h * w * c]);
            let file = std::fs::File::create(&path).map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
            encode_png(&rgb, w, h, &params.to_text(), std::io::BufWriter::new(file))
                .map_err(|e| Error::Input(format!("cannot encode {}: {e}", path.display())))?;
            written.push(path.display().to_string());
        }
        Ok(written)
    };
    let written = write_pngs(&image, &a.out, &params)?;
    let mut original_json = None;
    if let Some((original, tokens)) = &original {
        let stem = a.out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        let ext = a.out.extension().and_then(|s| s.to_str()).unwrap_or("png");
        let base = a.out.with_file_name(format!("{stem}-original.{ext}"));
        let plain = A1111Parameters { extra: vec![], ..params.clone() };
        let files = write_pngs(&read_f32(original.clone())?, &base, &plain)?;
        original_json = Some(serde_json::json!({ "original": files, "target_positions": tokens.target }));
    }
    let mut maps_json = None;
    if let (Some(dir), Some(maps)) = (&a.attention_maps, heatmaps) {
        let original_rgb = match &original {
            Some((o, _)) => Some(read_f32(o.clone())?),
            None => None,
        };
        let branches = maps
            .into_iter()
            .map(|(sub, acc)| {
                let rgb = match (sub, &original_rgb) {
                    (Some("original"), Some(o)) => o.clone(),
                    _ => image.clone(),
                };
                (sub, acc, rgb)
            })
            .collect();
        crate::heatmaps::write_branches(dir, &sd, &p.prompt, branches, [w, h])?;
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
        "seed": p.seed,
        "scheduler": a1111_sampler(kind),
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
