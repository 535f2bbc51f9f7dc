//! `pseudoword edit`: SuppressEOT on a real photo (DDIM inversion + null-text inversion, then the
//! two-branch run with ITO step scale 5). Writes the edited PNG, NAME-reconstruction.png (the
//! photo as the inversion reproduces it) and optionally tensors.

use std::path::{Path, PathBuf};

use clap::Args;
use pseudoword::error::Error;
use pseudoword::native::select_device;
use pseudoword::pipeline::GenerateParams;
use pseudoword::pipeline::png_out::{A1111Parameters, encode_png, to_rgb8};
use pseudoword::schedulers::SchedulerKind;
use pseudoword::pipeline::decode_latents;
use pseudoword::suppress::{InversionParams, PhotoEdit, SuppressTxt2Img, invert_photo, locate_words, photo_tensor};
use pseudoword::train::photos::prepare_photo;
use safetensors::Dtype;

use crate::{Common, add_embeddings, f32_bytes, read_f32, write_safetensors};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub common: Common,
    /// The photo (JPEG, PNG or WebP): centre-cropped and resized to the model's native size.
    #[arg(long)]
    pub image: PathBuf,
    /// A prompt describing the photo, containing the words to suppress.
    #[arg(long)]
    pub prompt: String,
    /// Starting point of null-text inversion (the reference: empty).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// DDIM steps (inversion and edit).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Square size in pixels the photo is cropped and resized to (a multiple of 8; default: the
    /// model's native size, e.g. 512 for SD 1.5).
    #[arg(long)]
    pub size: Option<usize>,
    /// Classifier-free guidance scale (> 1).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Adam iterations per step of null-text inversion (at most; it stops early when close).
    #[arg(long, default_value_t = 10)]
    pub null_text_iters: usize,
    /// Output PNG of the edit; the reconstruction goes to NAME-reconstruction.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write `image`, `reconstruction` F32 [1,H,W,3] in [0,1], `latents` [2,4,h,w] (final:
    /// reconstruction, edit) and `inverted_latent` [1,4,h,w] (x_T) to this safetensors file.
    #[arg(long)]
    pub out_tensor: Option<PathBuf>,
    /// Write per-token cross-attention heatmaps of the edit run to DIR/original/ (the
    /// reconstruction) and DIR/suppressed/ (see `generate --attention-maps`).
    #[arg(long, value_name = "DIR")]
    pub attention_maps: Option<PathBuf>,
    #[command(flatten)]
    pub suppress: crate::suppress::GenerateSuppress,
}

fn write_png(path: &Path, image: &[f32], w: usize, h: usize, params: &A1111Parameters) -> Result<(), Error> {
    let file = std::fs::File::create(path).map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
    encode_png(&to_rgb8(image), w, h, &params.to_text(), std::io::BufWriter::new(file))
        .map_err(|e| Error::Input(format!("cannot encode {}: {e}", path.display())))
}

pub fn run(a: EditArgs) -> Result<(), Error> {
    let s = a
        .suppress
        .params_with_scale(5.0)
        .ok_or_else(|| Error::Input("`edit` suppresses words of the prompt: give them with --suppress WORDS (e.g. --suppress glasses)".into()))?;
    let bytes = std::fs::read(&a.image).map_err(|e| Error::Input(format!("cannot read the photo {}: {e}", a.image.display())))?;
    let (device, device_name) = select_device(a.common.device)?;
    let mut sd = a.common.load(None, None, &device)?;
    add_embeddings(&mut sd.prompt, &a.common.embeddings)?;
    let size = a.size.unwrap_or_else(|| sd.default_size());
    if size == 0 || size % 8 != 0 {
        return Err(Error::Input(format!("--size must be a positive multiple of 8 (got {size})")));
    }
    let name = a.image.file_name().and_then(|n| n.to_str()).unwrap_or("photo");
    let photo = prepare_photo(&bytes, name, size as u32)?;
    let mut p = GenerateParams::new(a.prompt.clone(), &sd);
    p.negative_prompt = a.negative_prompt.clone();
    p.steps = a.steps;
    p.guidance = a.guidance;
    (p.width, p.height) = (size, size);
    p.scheduler = Some(SchedulerKind::Ddim);
    let inv = InversionParams { null_text_iters: a.null_text_iters, ..InversionParams::default() };
    let t0 = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut on_step = |phase: &str, done: usize, total: usize| {
        eprintln!("{phase} {done}/{total} ({:.2} s)", last.elapsed().as_secs_f64());
        last = std::time::Instant::now();
        true
    };
    let maps_wanted = a.attention_maps.is_some();
    let (r, heatmaps) = pollster::block_on(async {
        let toks = sd.prompt.tokenize(&p.prompt);
        locate_words(&sd.prompt.tokenizer, &toks, &s.words)?;
        let inverted = invert_photo(&sd, photo_tensor(&photo, &device), &p, &inv, &mut |d, t| on_step("inversion", d, t)).await?;
        let mut run = SuppressTxt2Img::from_inverted(&sd, &p, &s, &inverted).await?;
        if maps_wanted {
            run.enable_heatmaps();
        }
        let total = run.num_steps();
        while !run.is_done() {
            run.step(&sd).await?;
            on_step("edit", run.steps_done(), total);
        }
        let images = decode_latents(&sd, run.latents());
        let heatmaps = run.heatmaps().map(|(o, s)| (o.clone(), s.clone()));
        let edit = PhotoEdit {
            image: images.clone().narrow(0, 1, 1),
            reconstruction: images.narrow(0, 0, 1),
            latents: run.latents(),
            inverted,
            tokens: run.tokens().clone(),
        };
        Ok::<_, Error>((edit, heatmaps))
    })?;
    let [_, h, w, c] = r.image.dims();
    let image = read_f32(r.image)?;
    let reconstruction = read_f32(r.reconstruction)?;
    if let (Some(dir), Some((o, su))) = (&a.attention_maps, heatmaps) {
        let branches = vec![(Some("original"), o, reconstruction.clone()), (Some("suppressed"), su, image.clone())];
        crate::heatmaps::write_branches(dir, &sd, &p.prompt, branches, [w, h])?;
    }
    let mut extra = crate::suppress::GenerateSuppress::png_extra(&s);
    extra.push(("Null-text inversion".into(), format!("\"{}\", iters {}", name.replace('"', "'"), a.null_text_iters)));
    let params = A1111Parameters {
        prompt: p.prompt.clone(),
        negative_prompt: p.negative_prompt.clone(),
        steps: p.steps,
        sampler: "DDIM".into(),
        cfg_scale: p.guidance,
        seed: 0,
        width: w,
        height: h,
        model: sd.name.clone(),
        extra,
    };
    write_png(&a.out, &image, w, h, &params)?;
    let stem = a.out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = a.out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    let rec_path = a.out.with_file_name(format!("{stem}-reconstruction.{ext}"));
    write_png(&rec_path, &reconstruction, w, h, &A1111Parameters { extra: vec![], ..params.clone() })?;
    if let Some(t) = &a.out_tensor {
        let ld = r.latents.dims();
        let start = r.inverted.latents.last().cloned().ok_or_else(|| Error::Input("no inverted latent".into()))?;
        let sdims = start.dims();
        write_safetensors(
            t,
            &[
                ("image".into(), Dtype::F32, vec![1, h, w, c], f32_bytes(&image)),
                ("reconstruction".into(), Dtype::F32, vec![1, h, w, c], f32_bytes(&reconstruction)),
                ("latents".into(), Dtype::F32, ld.to_vec(), f32_bytes(&read_f32(r.latents)?)),
                ("inverted_latent".into(), Dtype::F32, sdims.to_vec(), f32_bytes(&read_f32(start)?)),
            ],
        )?;
    }
    let json = serde_json::json!({
        "out": a.out.display().to_string(),
        "reconstruction": rec_path.display().to_string(),
        "size": [w, h],
        "steps": p.steps,
        "target_positions": r.tokens.target,
        "null_text_iterations": r.inverted.null_text.iterations,
        "null_text_losses": r.inverted.null_text.losses,
        "attention_maps": a.attention_maps.as_ref().map(|d| d.display().to_string()),
        "device": device_name,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    println!("{json}");
    Ok(())
}
