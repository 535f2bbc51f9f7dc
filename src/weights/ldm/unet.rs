//! UNet of an original-LDM checkpoint (`model.diffusion_model.*`, the `openaimodel.UNetModel`
//! of CompVis/Stability) -> diffusers' `UNet2DConditionModel` keys and config. Ports the rules of
//! diffusers' `convert_ldm_unet_checkpoint` and `create_unet_diffusers_config_from_ldm`
//! (`loaders/single_file_utils.py`), the config from tensor shapes instead of the original YAML.
//!
//! With `L = layers_per_block` (2 in SD) the LDM blocks are flat lists:
//!
//! | before (LDM) | after (diffusers) |
//! |---|---|
//! | `time_embed.0` / `time_embed.2` | `time_embedding.linear_1` / `linear_2` |
//! | `input_blocks.0.0` | `conv_in` |
//! | `input_blocks.{i}.0` (i >= 1) | `down_blocks.{(i-1)/(L+1)}.resnets.{(i-1)%(L+1)}` |
//! | `input_blocks.{i}.1` | `down_blocks.{..}.attentions.{..}` |
//! | `input_blocks.{i}.0.op` | `down_blocks.{(i-1)/(L+1)}.downsamplers.0.conv` |
//! | `middle_block.0` / `.1` / `.2` | `mid_block.resnets.0` / `attentions.0` / `resnets.1` |
//! | `output_blocks.{i}.0` | `up_blocks.{i/(L+1)}.resnets.{i%(L+1)}` |
//! | `output_blocks.{i}.1` | `up_blocks.{i/(L+1)}.attentions.{i%(L+1)}` |
//! | `output_blocks.{i}.{1,2}.conv` | `up_blocks.{i/(L+1)}.upsamplers.0.conv` |
//! | `out.0` / `out.2` | `conv_norm_out` / `conv_out` |
//!
//! Inside resnets see [`RESNET`]; inside attentions (`SpatialTransformer`) the names already are
//! diffusers' (`proj_in`, `transformer_blocks.0.attn1.to_q`, `ff.net.0.proj`, ...).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::Shapes;

/// LDM `ResBlock` -> diffusers `ResnetBlock2D` (`input_blocks.1.0.in_layers.0.weight` ->
/// `down_blocks.0.resnets.0.norm1.weight`).
pub const RESNET: &[(&str, &str)] = &[
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

/// Fixed renames (whole module paths).
const TOP: &[(&str, &str)] = &[
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
];

fn rename(rest: &str, table: &[(&str, &str)]) -> Option<String> {
    table.iter().find_map(|(a, b)| rest.strip_prefix(a).filter(|r| r.starts_with('.')).map(|r| format!("{b}{r}")))
}

/// `(block, layer)` indices and what follows: `input_blocks.4.1.proj_in.weight` -> `(4, 1, "proj_in.weight")`.
fn split3<'a>(key: &'a str, head: &str) -> Option<(usize, usize, &'a str)> {
    let rest = key.strip_prefix(head)?.strip_prefix('.')?;
    let mut it = rest.splitn(3, '.');
    let i = it.next()?.parse().ok()?;
    let j = it.next()?.parse().ok()?;
    Some((i, j, it.next()?))
}

/// The diffusers key of UNet key `key` (without `model.diffusion_model.`), `None` when no rule
/// applies (the key is then reported as unexpected). `layers_per_block` as in the config.
pub fn unet_key(key: &str, layers_per_block: usize) -> Option<String> {
    if let Some(k) = rename(key, TOP) {
        return Some(k);
    }
    let n = layers_per_block + 1;
    if let Some((i, j, rest)) = split3(key, "input_blocks").filter(|t| t.0 >= 1) {
        let (b, l) = ((i - 1) / n, (i - 1) % n);
        return match (j, rest.strip_prefix("op.")) {
            (0, Some(leaf)) => Some(format!("down_blocks.{b}.downsamplers.0.conv.{leaf}")),
            (0, None) => rename(rest, RESNET).map(|r| format!("down_blocks.{b}.resnets.{l}.{r}")),
            (1, None) => Some(format!("down_blocks.{b}.attentions.{l}.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (j, rest) = rest.split_once('.')?;
        return match j {
            "0" | "2" => rename(rest, RESNET).map(|r| format!("mid_block.resnets.{}.{r}", if j == "0" { 0 } else { 1 })),
            "1" => Some(format!("mid_block.attentions.0.{rest}")),
            _ => None,
        };
    }
    if let Some((i, j, rest)) = split3(key, "output_blocks") {
        let (b, l) = (i / n, i % n);
        return match (j, rest.strip_prefix("conv.")) {
            (0, _) => rename(rest, RESNET).map(|r| format!("up_blocks.{b}.resnets.{l}.{r}")),
            (1 | 2, Some(leaf)) => Some(format!("up_blocks.{b}.upsamplers.0.conv.{leaf}")),
            (1, None) => Some(format!("up_blocks.{b}.attentions.{l}.{rest}")),
            _ => None,
        };
    }
    None
}

/// `layers_per_block` from the keys: the first downsampler sits at `input_blocks.{L+1}`; without
/// one (a single block) every input block but `conv_in` is a layer.
pub fn layers_per_block(s: &Shapes) -> Result<usize, String> {
    let blocks: BTreeSet<usize> = s.keys().filter_map(|k| split3(k, "input_blocks").map(|t| t.0)).collect();
    let count = blocks.iter().next_back().map_or(0, |m| m + 1);
    if count < 2 {
        return Err("the UNet has no `input_blocks`".into());
    }
    let first_op = blocks.iter().find(|&&i| s.has(&format!("input_blocks.{i}.0.op.weight")));
    let lpb = first_op.map_or(count - 1, |i| i - 1);
    if lpb == 0 || count % (lpb + 1) != 0 {
        return Err(format!("{count} UNet input blocks do not form blocks of {lpb} layers + a downsampler"));
    }
    Ok(lpb)
}

/// `UNet2DConditionModel` config (diffusers `config.json` keys) from the shapes. `sd2` picks SD 2's
/// attention heads (head dim 64: `attention_head_dim` = channels / 64 per block, as diffusers
/// derives from `num_head_channels: 64`); SD 1 has 8 heads everywhere (`num_heads: 8`).
/// `norm_num_groups` (32) and `sample_size` cannot be seen in shapes: SD's values are used.
pub fn unet_config(s: &Shapes, sd2: bool, sample_size: usize) -> Result<Value, String> {
    let lpb = layers_per_block(s)?;
    let n = lpb + 1;
    let num_input = s.keys().filter_map(|k| split3(k, "input_blocks").map(|t| t.0)).max().unwrap_or(0) + 1;
    let blocks = num_input / n;
    let dim = |k: &str, d: usize| s.dim(k, d);
    let mut channels = Vec::new();
    let mut down = Vec::new();
    let mut up = Vec::new();
    let mut depths = BTreeSet::new();
    for b in 0..blocks {
        let i = 1 + b * n;
        channels.push(dim(&format!("input_blocks.{i}.0.out_layers.3.weight"), 0)?);
        let attn = s.has(&format!("input_blocks.{i}.1.proj_in.weight"));
        down.push(if attn { "CrossAttnDownBlock2D" } else { "DownBlock2D" });
        if attn {
            let p = format!("input_blocks.{i}.1.transformer_blocks.");
            let depth = s.keys().filter_map(|k| k.strip_prefix(&p)?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1);
            depths.insert(depth);
        }
        let up_attn = s.has(&format!("output_blocks.{}.1.proj_in.weight", b * n));
        up.push(if up_attn { "CrossAttnUpBlock2D" } else { "UpBlock2D" });
    }
    let mid = if s.has("middle_block.1.proj_in.weight") {
        json!("UNetMidBlock2DCrossAttn")
    } else if s.keys().any(|k| k.starts_with("middle_block.")) {
        return Err("a mid block without attention (not an SD UNet)".into());
    } else {
        Value::Null
    };
    let to_k = s.keys().find(|k| k.ends_with("attn2.to_k.weight")).ok_or("the UNet has no cross-attention (`attn2.to_k`)")?;
    let proj_in = s.keys().find(|k| k.ends_with(".proj_in.weight")).ok_or("the UNet has no `proj_in`")?;
    let heads: Vec<usize> = if sd2 { channels.iter().map(|c| (c / 64).max(1)).collect() } else { vec![8; blocks] };
    let depth = match depths.len() {
        0 => 1,
        1 => *depths.iter().next().unwrap(),
        _ => return Err(format!("different transformer depths per block {depths:?}")),
    };
    Ok(json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": dim("input_blocks.0.0.weight", 1)?,
        "out_channels": dim("out.2.weight", 0)?,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": mid,
        "block_out_channels": channels,
        "layers_per_block": lpb,
        "cross_attention_dim": dim(to_k, 1)?,
        "attention_head_dim": if sd2 { json!(heads) } else { json!(8) },
        "use_linear_projection": s.rank(proj_in)? == 2,
        "transformer_layers_per_block": depth,
        "norm_num_groups": 32,
        "upcast_attention": false,
    }))
}

#[cfg(test)]
mod tests {
    use super::unet_key;

    #[test]
    fn sd15_keys() {
        let k = |s: &str| unet_key(s, 2).unwrap();
        assert_eq!(k("time_embed.2.bias"), "time_embedding.linear_2.bias");
        assert_eq!(k("input_blocks.0.0.weight"), "conv_in.weight");
        assert_eq!(k("input_blocks.1.0.in_layers.0.weight"), "down_blocks.0.resnets.0.norm1.weight");
        assert_eq!(k("input_blocks.5.1.proj_in.weight"), "down_blocks.1.attentions.1.proj_in.weight");
        assert_eq!(k("input_blocks.6.0.op.bias"), "down_blocks.1.downsamplers.0.conv.bias");
        assert_eq!(k("input_blocks.11.0.skip_connection.weight"), "down_blocks.3.resnets.1.conv_shortcut.weight");
        assert_eq!(k("middle_block.2.emb_layers.1.weight"), "mid_block.resnets.1.time_emb_proj.weight");
        assert_eq!(
            k("middle_block.1.transformer_blocks.0.attn2.to_k.weight"),
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        );
        assert_eq!(k("output_blocks.2.1.conv.weight"), "up_blocks.0.upsamplers.0.conv.weight");
        assert_eq!(k("output_blocks.5.2.conv.bias"), "up_blocks.1.upsamplers.0.conv.bias");
        assert_eq!(k("output_blocks.5.1.norm.weight"), "up_blocks.1.attentions.2.norm.weight");
        assert_eq!(k("output_blocks.11.0.out_layers.3.weight"), "up_blocks.3.resnets.2.conv2.weight");
        assert_eq!(k("out.2.weight"), "conv_out.weight");
        assert_eq!(unet_key("label_emb.0.0.weight", 2), None);
    }
}
