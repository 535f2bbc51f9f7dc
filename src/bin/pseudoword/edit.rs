//! `pseudoword edit`: SuppressEOT on a real photo (DDIM inversion + null-text inversion, then the
//! two-branch run with ITO step scale 5). Writes the edited PNG, NAME-reconstruction.png (the
//! photo as the inversion reproduces it) and optionally tensors.

use std::path::{Path, PathBuf};

use clap::Args;
use pseudoword::error::{Error, InputError};
use pseudoword::jobs::{EditSettings, Generation, SuppressSettings};
use pseudoword::native::select_device;
use pseudoword::pipeline::png_out::{A1111Parameters, encode_png, to_rgb8};
use pseudoword::pipeline::run_to_end;
use safetensors::Dtype;

use crate::{Common, add_embeddings, f32_bytes, read_f32, write_safetensors};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub common: Common,
    /// The photo (JPEG, PNG or WebP): centre-cropped and resized to the model's native size.
    #[arg(long)]
    pub image: PathBuf,
    #[command(flatten)]
    pub settings: EditSettings,
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
    pub suppress: SuppressSettings,
}

fn write_png(path: &Path, image: &[f32], w: usize, h: usize, params: &A1111Parameters) -> Result<(), Error> {
    let file = std::fs::File::create(path).map_err(|e| InputError::file("write", path.display(), e))?;
    encode_png(&to_rgb8(image), w, h, &params.to_text(), std::io::BufWriter::new(file)).map_err(|e| InputError::file("encode", path.display(), e).into())
}

pub fn run(a: EditArgs) -> Result<(), Error> {
    if a.suppress.suppress.is_none() {
        return Err(InputError::setting("suppress", "is needed: `edit` suppresses words of the prompt (e.g. glasses)").into());
    }
    let bytes = std::fs::read(&a.image).map_err(|e| InputError::file("read the photo", a.image.display(), e))?;
    let (device, device_name) = select_device(a.common.device)?;
    let mut sd = a.common.load(None, None, &device)?;
    add_embeddings(&mut sd.prompt, &a.common.embeddings)?;
    let name = a.image.file_name().and_then(|n| n.to_str()).unwrap_or("photo");
    let t0 = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut on_step = |phase: &str, done: usize, total: usize| {
        eprintln!("{phase} {done}/{total} ({:.2} s)", last.elapsed().as_secs_f64());
        last = std::time::Instant::now();
        true
    };
    let r = pollster::block_on(async {
        let mut job = Generation::start_edit(&sd, &bytes, name, &a.settings, &a.suppress, a.attention_maps.is_some(), &mut |d, t| on_step("inversion", d, t)).await?;
        run_to_end(&mut job, &sd, &mut |d, t, _| on_step("edit", d, t)).await?;
        job.finish(&sd)
    })?;
    let [_, h, w, c] = r.image.dims();
    let image = read_f32(r.image)?;
    let reconstruction = read_f32(r.original.ok_or(InputError::Finished)?)?;
    if let Some(dir) = &a.attention_maps {
        let mut maps = r.heatmaps.into_iter();
        if let (Some((_, o)), Some((_, su))) = (maps.next(), maps.next()) {
            let branches = vec![(Some("original"), o, reconstruction.clone()), (Some("suppressed"), su, image.clone())];
            crate::heatmaps::write_branches(dir, &sd, &r.params.prompt, branches, [w, h])?;
        }
    }
    let params = r.parameters;
    write_png(&a.out, &image, w, h, &params)?;
    let stem = a.out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = a.out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    let rec_path = a.out.with_file_name(format!("{stem}-reconstruction.{ext}"));
    write_png(&rec_path, &reconstruction, w, h, &params.plain())?;
    let edit = r.edit.ok_or(InputError::Finished)?;
    if let Some(t) = &a.out_tensor {
        let ld = r.all_latents.dims();
        let start = edit.inverted.latents.last().cloned().ok_or(InputError::Finished)?;
        let sdims = start.dims();
        write_safetensors(
            t,
            &[
                ("image".into(), Dtype::F32, vec![1, h, w, c], f32_bytes(&image)),
                ("reconstruction".into(), Dtype::F32, vec![1, h, w, c], f32_bytes(&reconstruction)),
                ("latents".into(), Dtype::F32, ld.to_vec(), f32_bytes(&read_f32(r.all_latents)?)),
                ("inverted_latent".into(), Dtype::F32, sdims.to_vec(), f32_bytes(&read_f32(start)?)),
            ],
        )?;
    }
    let json = serde_json::json!({
        "out": a.out.display().to_string(),
        "reconstruction": rec_path.display().to_string(),
        "size": [w, h],
        "steps": r.params.steps,
        "target_positions": r.tokens.map(|t| t.target).unwrap_or_default(),
        "null_text_iterations": edit.inverted.null_text.iterations,
        "null_text_losses": edit.inverted.null_text.losses,
        "attention_maps": a.attention_maps.as_ref().map(|d| d.display().to_string()),
        "device": device_name,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    println!("{json}");
    Ok(())
}
