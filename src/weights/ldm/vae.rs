//! VAE of an original-LDM checkpoint (`first_stage_model.*`, `ldm.modules.diffusionmodules.model`
//! `Encoder`/`Decoder`) -> diffusers' `AutoencoderKL` keys and config. Ports diffusers'
//! `convert_ldm_vae_checkpoint` and `create_vae_diffusers_config_from_ldm`.
//!
//! | before (LDM) | after (diffusers) |
//! |---|---|
//! | `encoder.down.{i}.block.{j}` | `encoder.down_blocks.{i}.resnets.{j}` |
//! | `encoder.down.{i}.downsample.conv` | `encoder.down_blocks.{i}.downsamplers.0.conv` |
//! | `decoder.up.{i}.block.{j}` (LDM counts up blocks from the lowest resolution) | `decoder.up_blocks.{n-1-i}.resnets.{j}` |
//! | `decoder.up.{i}.upsample.conv` | `decoder.up_blocks.{n-1-i}.upsamplers.0.conv` |
//! | `{en,de}coder.mid.block_{1,2}` | `{en,de}coder.mid_block.resnets.{0,1}` |
//! | `{en,de}coder.mid.attn_1.{norm,q,k,v,proj_out}` | `{en,de}coder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` |
//! | `{en,de}coder.norm_out` | `{en,de}coder.conv_norm_out` |
//! | `*.nin_shortcut` (in resnets) | `*.conv_shortcut` |
//!
//! The attention projections are 1x1 convolutions in LDM (`[c, c, 1, 1]`): the same bytes as the
//! `[c, c]` linear weight, so only the shape changes ([`squeeze_attention`]).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::Shapes;

/// Mid-block attention module names (LDM `AttnBlock` -> diffusers `Attention`).
const ATTENTION: &[(&str, &str)] = &[("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")];

/// The diffusers key of VAE key `key` (without `first_stage_model.`); `up_blocks` is the number
/// of decoder up blocks (to reverse their order). `None` when no rule applies.
pub fn vae_key(key: &str, up_blocks: usize) -> Option<String> {
    let (side, rest) = key.split_once('.')?;
    if !matches!(side, "encoder" | "decoder") {
        return matches!(side, "quant_conv" | "post_quant_conv").then(|| key.to_string());
    }
    let resnet = |r: &str| r.replacen("nin_shortcut", "conv_shortcut", 1);
    let mapped = if let Some(r) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{r}")
    } else if let Some(r) = rest.strip_prefix("conv_in.").or(rest.strip_prefix("conv_out.")) {
        format!("{}.{r}", &rest[..rest.len() - r.len() - 1])
    } else if let Some(r) = rest.strip_prefix("mid.block_") {
        let (k, r) = r.split_once('.')?;
        let k: usize = k.parse().ok().filter(|k| (1..=2).contains(k))?;
        format!("mid_block.resnets.{}.{}", k - 1, resnet(r))
    } else if let Some(r) = rest.strip_prefix("mid.attn_1.") {
        let (m, leaf) = r.rsplit_once('.')?;
        let (_, new) = ATTENTION.iter().find(|(old, _)| *old == m)?;
        format!("mid_block.attentions.0.{new}.{leaf}")
    } else {
        let (kind, r) = rest.split_once('.')?;
        let (i, r) = r.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let (block, i) = match (side, kind) {
            ("encoder", "down") => ("down_blocks", i),
            ("decoder", "up") if i < up_blocks => ("up_blocks", up_blocks - 1 - i),
            _ => return None,
        };
        if let Some(r) = r.strip_prefix("block.") {
            format!("{block}.{i}.resnets.{}", resnet(r))
        } else if let Some(leaf) = r.strip_prefix("downsample.conv.").or(r.strip_prefix("upsample.conv.")) {
            let s = if block == "down_blocks" { "downsamplers" } else { "upsamplers" };
            format!("{block}.{i}.{s}.0.conv.{leaf}")
        } else {
            return None;
        }
    };
    Some(format!("{side}.{mapped}"))
}

/// The shape diffusers uses for a converted VAE tensor: attention projection weights stored as
/// 1x1 (or 1-wide 1-D) convolutions lose their trailing 1s (`[512, 512, 1, 1]` -> `[512, 512]`).
pub fn squeeze_attention(diffusers_key: &str, shape: &[usize]) -> Vec<usize> {
    let is_proj = [".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"].iter().any(|s| diffusers_key.ends_with(s));
    if is_proj && shape.len() > 2 && shape[2..].iter().all(|&d| d == 1) {
        shape[..2].to_vec()
    } else {
        shape.to_vec()
    }
}

/// Number of decoder up blocks (`decoder.up.{i}`).
pub fn up_blocks(s: &Shapes) -> usize {
    let ids: BTreeSet<usize> = s.keys().filter_map(|k| k.strip_prefix("decoder.up.")?.split('.').next()?.parse().ok()).collect();
    ids.len()
}

/// `AutoencoderKL` config from the shapes (`scaling_factor` 0.18215, SD's; `norm_num_groups` 32).
pub fn vae_config(s: &Shapes) -> Result<Value, String> {
    let downs: BTreeSet<usize> = s.keys().filter_map(|k| k.strip_prefix("encoder.down.")?.split('.').next()?.parse().ok()).collect();
    if downs.is_empty() {
        return Err("the VAE has no `encoder.down` blocks".into());
    }
    let mut channels = Vec::new();
    for i in 0..downs.len() {
        channels.push(s.dim(&format!("encoder.down.{i}.block.0.conv2.weight"), 0)?);
    }
    let layers: BTreeSet<usize> = s.keys().filter_map(|k| k.strip_prefix("encoder.down.0.block.")?.split('.').next()?.parse().ok()).collect();
    let n = channels.len();
    Ok(json!({
        "_class_name": "AutoencoderKL",
        "in_channels": s.dim("encoder.conv_in.weight", 1)?,
        "out_channels": s.dim("decoder.conv_out.weight", 0)?,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "up_block_types": vec!["UpDecoderBlock2D"; n],
        "block_out_channels": channels,
        "layers_per_block": layers.len(),
        "latent_channels": s.dim("decoder.conv_in.weight", 1)?,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
        "use_quant_conv": s.has("quant_conv.weight"),
        "use_post_quant_conv": s.has("post_quant_conv.weight"),
        "mid_block_add_attention": s.has("encoder.mid.attn_1.q.weight"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_vae_keys() {
        let k = |s: &str| vae_key(s, 4).unwrap();
        assert_eq!(k("encoder.down.1.block.0.nin_shortcut.weight"), "encoder.down_blocks.1.resnets.0.conv_shortcut.weight");
        assert_eq!(k("encoder.down.2.downsample.conv.bias"), "encoder.down_blocks.2.downsamplers.0.conv.bias");
        assert_eq!(k("decoder.up.3.block.2.conv1.weight"), "decoder.up_blocks.0.resnets.2.conv1.weight");
        assert_eq!(k("decoder.up.1.upsample.conv.weight"), "decoder.up_blocks.2.upsamplers.0.conv.weight");
        assert_eq!(k("decoder.mid.block_2.norm1.bias"), "decoder.mid_block.resnets.1.norm1.bias");
        assert_eq!(k("encoder.mid.attn_1.proj_out.weight"), "encoder.mid_block.attentions.0.to_out.0.weight");
        assert_eq!(k("encoder.mid.attn_1.norm.weight"), "encoder.mid_block.attentions.0.group_norm.weight");
        assert_eq!(k("decoder.norm_out.bias"), "decoder.conv_norm_out.bias");
        assert_eq!(k("decoder.conv_in.weight"), "decoder.conv_in.weight");
        assert_eq!(k("post_quant_conv.weight"), "post_quant_conv.weight");
        assert_eq!(vae_key("decoder.up.4.block.0.conv1.weight", 4), None);
        assert_eq!(squeeze_attention("encoder.mid_block.attentions.0.to_q.weight", &[512, 512, 1, 1]), vec![512, 512]);
        assert_eq!(squeeze_attention("encoder.conv_in.weight", &[128, 3, 3, 3]), vec![128, 3, 3, 3]);
    }
}
