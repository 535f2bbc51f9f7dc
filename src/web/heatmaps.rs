//! Per-token attention heatmaps for the browser (the CLI's `--attention-maps`, see
//! `src/bin/pseudoword/heatmaps.rs`): each accumulated branch is read back once after the run
//! and every prompt token's map is drawn over that branch's image ([`crate::attention_maps::overlay`])
//! and PNG-encoded, so the page can show one strip per branch (before / after suppression).

use js_sys::{Array, Object, Uint8Array};
use wasm_bindgen::prelude::*;

use super::{js_err, set};
use crate::pipeline::Tokenized;
use crate::pipeline::png_out::{encode_png, to_rgb8};
use crate::attention_maps::HeatmapAccumulator;
use crate::attention_maps::overlay::overlay;

/// One branch to draw: its name (`"image"`, `"original"`, `"suppressed"`), its accumulated
/// maps, and its image (`[H, W, 3]` in [0, 1]).
pub(super) struct Branch<'a> {
    pub name: &'static str,
    pub maps: &'a HeatmapAccumulator,
    pub image: &'a [f32],
}

/// `{tokens, positions, size: [h, w], steps, branches: [{name, tiles: [Uint8Array PNG]}]}`, or
/// `None` when no step was accumulated. `width` x `height` is the image size.
pub(super) async fn heatmaps_js(branches: &[Branch<'_>], prompt: &Tokenized, eos_id: u32, width: usize, height: usize) -> Result<Option<JsValue>, JsValue> {
    let out = Object::new();
    let list = Array::new();
    let mut any = false;
    for b in branches {
        let Some(hm) = b.maps.finish(prompt, eos_id).await.map_err(|e| js_err(format!("heatmap readback failed: {e}")))? else { continue };
        if !any {
            set(&out, "tokens", Array::from_iter(hm.tokens.iter().map(|t| JsValue::from_str(t.trim_end_matches("</w>")))));
            set(&out, "positions", Array::from_iter(hm.positions.iter().map(|&p| JsValue::from_f64(p as f64))));
            set(&out, "size", Array::of2(&JsValue::from_f64(hm.size[0] as f64), &JsValue::from_f64(hm.size[1] as f64)));
            set(&out, "steps", hm.steps as f64);
            any = true;
        }
        let rgb = to_rgb8(&b.image[..width * height * 3]);
        let tiles = Array::new();
        for k in 0..hm.tokens.len() {
            let tile = overlay(&rgb, width, height, hm.map(0, k), hm.size);
            let mut png = Vec::new();
            encode_png(&tile, width, height, "", &mut png).map_err(js_err)?;
            tiles.push(&Uint8Array::from(png.as_slice()));
        }
        let o = Object::new();
        set(&o, "name", b.name);
        set(&o, "tiles", tiles);
        list.push(&o);
    }
    set(&out, "branches", list);
    Ok(any.then(|| out.into()))
}
