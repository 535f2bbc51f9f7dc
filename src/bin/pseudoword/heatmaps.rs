//! `generate --attention-maps DIR`: per-token heatmap overlays (`NN-TOKEN.png`, one per prompt
//! token, numbered by token position), `strip.png` (all overlays side by side) and the listing
//! for `maps.json`. With several images, image `i` gets the folder `DIR/i/`.

use std::path::Path;

use pseudoword::error::{Error, InputError};
use pseudoword::pipeline::png_out::{encode_png, to_rgb8};
use pseudoword::pipeline::StableDiffusion;
use pseudoword::suppress::{HeatmapAccumulator, TokenHeatmaps};
use pseudoword::attention_maps::overlay::{overlay, strip};

fn write_png(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<(), Error> {
    let file = std::fs::File::create(path).map_err(|e| Error::from(InputError::file("write", path.display(), e)))?;
    encode_png(rgb, w, h, "", std::io::BufWriter::new(file)).map_err(|e| Error::from(InputError::file("encode", path.display(), e)))
}

/// Writes the overlays of every image of `hm` over `images` (`[N, H, W, 3]` in [0, 1]) into
/// `dir`; returns the JSON listing.
pub fn write_heatmaps(dir: &Path, hm: &TokenHeatmaps, images: &[f32], [w, h]: [usize; 2]) -> Result<serde_json::Value, Error> {
    let mut per_image = vec![];
    for i in 0..hm.batch {
        let folder = if hm.batch == 1 { dir.to_path_buf() } else { dir.join(i.to_string()) };
        std::fs::create_dir_all(&folder).map_err(|e| Error::from(InputError::file("create", folder.display(), e)))?;
        let rgb = to_rgb8(&images[i * h * w * 3..(i + 1) * h * w * 3]);
        let mut files = vec![];
        let mut tiles = vec![];
        for (k, &pos) in hm.positions.iter().enumerate() {
            let tile = overlay(&rgb, w, h, hm.map(i, k), hm.size);
            let path = folder.join(format!("{pos:02}-{}.png", hm.label(k)));
            write_png(&path, &tile, w, h)?;
            files.push(path.display().to_string());
            tiles.push(tile);
        }
        let strip_path = folder.join("strip.png");
        if !tiles.is_empty() {
            let (s, sw) = strip(&tiles, w, h);
            write_png(&strip_path, &s, sw, h)?;
        }
        per_image.push(serde_json::json!({ "files": files, "strip": strip_path.display().to_string() }));
    }
    Ok(serde_json::json!({
        "tokens": hm.tokens,
        "positions": hm.positions,
        "map_size": hm.size,
        "steps": hm.steps,
        "heads": "all",
        "images": per_image,
    }))
}

/// Writes `v` pretty-printed to `path`.
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), Error> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(|e| Error::from(InputError::file("create", path.display(), e)))?;
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::from(InputError::file("serialise", path.display(), e)))?;
    std::fs::write(path, text).map_err(|e| Error::from(InputError::file("write", path.display(), e)))
}

/// Reads back every branch's heatmaps and writes them (`(None, ..)`: straight into `dir`;
/// `(Some(name), ..)`: into `dir/name/`) over that branch's images (`[N, H, W, 3]` in [0, 1]),
/// plus `dir/maps.json`.
pub fn write_branches(
    dir: &Path,
    sd: &StableDiffusion,
    prompt: &str,
    branches: Vec<(Option<&str>, HeatmapAccumulator, Vec<f32>)>,
    size: [usize; 2],
) -> Result<(), Error> {
    let tokens = sd.prompt.tokenize(prompt);
    let mut parts = serde_json::Map::new();
    let mut single = None;
    for (sub, acc, rgb) in branches {
        let Some(hm) = pollster::block_on(acc.finish(&tokens, sd.prompt.tokenizer.eos_id()))? else { continue };
        let folder = sub.map_or_else(|| dir.to_path_buf(), |s| dir.join(s));
        let v = write_heatmaps(&folder, &hm, &rgb, size)?;
        match sub {
            Some(s) => {
                parts.insert(s.into(), v);
            }
            None => single = Some(v),
        }
    }
    write_json(&dir.join("maps.json"), &single.unwrap_or(serde_json::Value::Object(parts)))
}
