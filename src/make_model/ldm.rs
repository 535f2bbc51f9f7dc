//! The original-LDM single-file layout (`v1-5-pruned-emaonly.safetensors`,
//! `v2-1_768-ema-pruned.safetensors`): the inverse of `crate::weights::ldm`'s conversion rules
//! (read there, before -> after; here after -> before), plus the buffers real checkpoints carry
//! and the converter skips (the DDPM noise schedule, SD 1's `position_ids`, OpenCLIP's 24th
//! layer, `text_projection`, `logit_scale`).
//!
//! | diffusers / transformers (canonical) | LDM |
//! |---|---|
//! | `down_blocks.{b}.resnets.{l}.norm1` | `model.diffusion_model.input_blocks.{1+b(L+1)+l}.0.in_layers.0` |
//! | `down_blocks.{b}.downsamplers.0.conv` | `model.diffusion_model.input_blocks.{(b+1)(L+1)}.0.op` |
//! | `up_blocks.{b}.upsamplers.0.conv` | `model.diffusion_model.output_blocks.{b(L+1)+L}.{2 with attention, else 1}.conv` |
//! | `decoder.up_blocks.{i}` | `first_stage_model.decoder.up.{n-1-i}` |
//! | `*.mid_block.attentions.0.to_q.weight` `[c, c]` | `first_stage_model.*.mid.attn_1.q.weight` `[c, c, 1, 1]` |
//! | `text_model.*` (SD 1) | `cond_stage_model.transformer.text_model.*` |
//! | `...layers.{i}.self_attn.{q,k,v}_proj.weight` (SD 2) | `cond_stage_model.model.transformer.resblocks.{i}.attn.in_proj_weight` (rows q, k, v) |

use super::writer::{Fill, FileDtype, Planned};
use crate::models::CLIPTextConfig;
use crate::weights::ParamSpec;

pub const UNET: &str = "model.diffusion_model.";
pub const VAE: &str = "first_stage_model.";
pub const CLIP: &str = "cond_stage_model.transformer.";
pub const OPEN_CLIP: &str = "cond_stage_model.model.";

/// diffusers `ResnetBlock2D` -> LDM `ResBlock` module names.
const RESNET: &[(&str, &str)] = &[
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

fn resnet(rest: &str) -> Option<String> {
    let (m, leaf) = rest.split_once('.')?;
    RESNET.iter().find(|(a, _)| *a == m).map(|(_, b)| format!("{b}.{leaf}"))
}

/// `"{b}.{kind}.{l}.{rest}"` -> `(b, kind, l, rest)`.
fn block(rest: &str) -> Option<(usize, &str, usize, &str)> {
    let mut it = rest.splitn(4, '.');
    let b = it.next()?.parse().ok()?;
    let kind = it.next()?;
    let l = it.next()?.parse().ok()?;
    Some((b, kind, l, it.next()?))
}

/// The UNet's layout as the LDM numbering needs it, read from its parameter names.
pub struct UNetLayout {
    pub layers_per_block: usize,
    /// Up blocks with attentions (their upsampler is the block's third module).
    pub up_attention: Vec<bool>,
}

impl UNetLayout {
    pub fn of(specs: &[ParamSpec]) -> Self {
        let idx = |k: &str, head: &str, kind: &str| -> Option<(usize, usize)> {
            let (b, kd, l, _) = block(k.strip_prefix(head)?)?;
            (kd == kind).then_some((b, l))
        };
        let layers_per_block = specs.iter().filter_map(|s| idx(&s.key, "down_blocks.", "resnets")).map(|(_, l)| l + 1).max().unwrap_or(1);
        let blocks = specs.iter().filter_map(|s| idx(&s.key, "up_blocks.", "resnets")).map(|(b, _)| b + 1).max().unwrap_or(0);
        let up_attention = (0..blocks).map(|b| specs.iter().any(|s| s.key.starts_with(&format!("up_blocks.{b}.attentions.")))).collect();
        Self { layers_per_block, up_attention }
    }

    /// The LDM name (without `model.diffusion_model.`) of UNet parameter `key`.
    pub fn ldm_key(&self, key: &str) -> Option<String> {
        let n = self.layers_per_block + 1;
        for (a, b) in [("conv_in.", "input_blocks.0.0."), ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")] {
            if let Some(leaf) = key.strip_prefix(a) {
                return Some(format!("{b}{leaf}"));
            }
        }
        if let Some(r) = key.strip_prefix("down_blocks.") {
            let (b, kind, l, rest) = block(r)?;
            return match kind {
                "resnets" => resnet(rest).map(|m| format!("input_blocks.{}.0.{m}", 1 + b * n + l)),
                "attentions" => Some(format!("input_blocks.{}.1.{rest}", 1 + b * n + l)),
                "downsamplers" => rest.strip_prefix("conv.").map(|leaf| format!("input_blocks.{}.0.op.{leaf}", (b + 1) * n)),
                _ => None,
            };
        }
        if let Some(r) = key.strip_prefix("mid_block.") {
            let (kind, r) = r.split_once('.')?;
            let (l, rest) = r.split_once('.')?;
            return match (kind, l) {
                ("resnets", "0") => resnet(rest).map(|m| format!("middle_block.0.{m}")),
                ("resnets", "1") => resnet(rest).map(|m| format!("middle_block.2.{m}")),
                ("attentions", "0") => Some(format!("middle_block.1.{rest}")),
                _ => None,
            };
        }
        if let Some(r) = key.strip_prefix("up_blocks.") {
            let (b, kind, l, rest) = block(r)?;
            return match kind {
                "resnets" => resnet(rest).map(|m| format!("output_blocks.{}.0.{m}", b * n + l)),
                "attentions" => Some(format!("output_blocks.{}.1.{rest}", b * n + l)),
                "upsamplers" => {
                    let j = if *self.up_attention.get(b)? { 2 } else { 1 };
                    rest.strip_prefix("conv.").map(|leaf| format!("output_blocks.{}.{j}.conv.{leaf}", b * n + n - 1))
                }
                _ => None,
            };
        }
        None
    }
}

/// diffusers VAE mid-block attention -> LDM `AttnBlock` names.
const VAE_ATTENTION: &[(&str, &str)] = &[("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")];

/// The LDM name (without `first_stage_model.`) of VAE parameter `key`; `up_blocks` = number of
/// decoder up blocks (LDM counts them from the lowest resolution).
pub fn vae_ldm_key(key: &str, up_blocks: usize) -> Option<String> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some(key.to_string());
    }
    let (side, rest) = key.split_once('.')?;
    let shortcut = |r: &str| r.replacen("conv_shortcut", "nin_shortcut", 1);
    let mapped = if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else if let Some(leaf) = rest.strip_prefix("conv_norm_out.") {
        format!("norm_out.{leaf}")
    } else if let Some(r) = rest.strip_prefix("mid_block.resnets.") {
        let (k, r) = r.split_once('.')?;
        format!("mid.block_{}.{}", k.parse::<usize>().ok()? + 1, shortcut(r))
    } else if let Some(r) = rest.strip_prefix("mid_block.attentions.0.") {
        let (m, leaf) = r.rsplit_once('.')?;
        let (_, old) = VAE_ATTENTION.iter().find(|(new, _)| *new == m)?;
        format!("mid.attn_1.{old}.{leaf}")
    } else {
        let (kind, r) = rest.split_once('.')?;
        let (i, r) = r.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let (block, i, sampler) = match (side, kind) {
            ("encoder", "down_blocks") => ("down", i, "downsample"),
            ("decoder", "up_blocks") if i < up_blocks => ("up", up_blocks - 1 - i, "upsample"),
            _ => return None,
        };
        if let Some(r) = r.strip_prefix("resnets.") {
            format!("{block}.{i}.block.{}", shortcut(r))
        } else if let Some(leaf) = r.strip_prefix("downsamplers.0.conv.").or(r.strip_prefix("upsamplers.0.conv.")) {
            format!("{block}.{i}.{sampler}.conv.{leaf}")
        } else {
            return None;
        }
    };
    Some(format!("{side}.{mapped}"))
}

/// LDM keeps the VAE attention projections as 1x1 convolutions.
fn vae_ldm_shape(key: &str, shape: &[usize]) -> Vec<usize> {
    let proj = [".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"].iter().any(|s| key.ends_with(s));
    if proj && shape.len() == 2 { vec![shape[0], shape[1], 1, 1] } else { shape.to_vec() }
}

/// The DDPM buffers of an LDM checkpoint (`betas`, `alphas_cumprod`, ...), SD's scaled-linear
/// schedule, 1000 steps, as `ldm.models.diffusion.ddpm.DDPM.register_schedule` computes them.
fn schedule_buffers(dtype: FileDtype) -> Vec<Planned> {
    let (b0, b1) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let betas: Vec<f64> = (0..1000).map(|i| (b0 + (b1 - b0) * i as f64 / 999.0).powi(2)).collect();
    let mut acp = Vec::with_capacity(1000);
    let mut p = 1.0;
    for b in &betas {
        p *= 1.0 - b;
        acp.push(p);
    }
    let prev: Vec<f64> = std::iter::once(1.0).chain(acp[..999].iter().copied()).collect();
    let var: Vec<f64> = (0..1000).map(|i| betas[i] * (1.0 - prev[i]) / (1.0 - acp[i])).collect();
    let map = |f: &dyn Fn(usize) -> f64| (0..1000).map(f).map(|x| x as f32).collect::<Vec<f32>>();
    let buffers: Vec<(&str, Vec<f32>)> = vec![
        ("betas", map(&|i| betas[i])),
        ("alphas_cumprod", map(&|i| acp[i])),
        ("alphas_cumprod_prev", map(&|i| prev[i])),
        ("sqrt_alphas_cumprod", map(&|i| acp[i].sqrt())),
        ("sqrt_one_minus_alphas_cumprod", map(&|i| (1.0 - acp[i]).sqrt())),
        ("log_one_minus_alphas_cumprod", map(&|i| (1.0 - acp[i]).ln())),
        ("sqrt_recip_alphas_cumprod", map(&|i| (1.0 / acp[i]).sqrt())),
        ("sqrt_recipm1_alphas_cumprod", map(&|i| (1.0 / acp[i] - 1.0).sqrt())),
        ("posterior_variance", map(&|i| var[i])),
        ("posterior_log_variance_clipped", map(&|i| var[i].max(1e-20).ln())),
        ("posterior_mean_coef1", map(&|i| betas[i] * prev[i].sqrt() / (1.0 - acp[i]))),
        ("posterior_mean_coef2", map(&|i| (1.0 - prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - acp[i]))),
    ];
    buffers.into_iter().map(|(name, v)| Planned { name: name.into(), dtype, shape: vec![1000], fill: Fill::Values(v) }).collect()
}

/// OpenCLIP ViT-H text tower (SD 2) for a `CLIPTextConfig` of `L` layers: the file has `L + 1`
/// resblocks (diffusers drops the last, SD 2 conditions on the penultimate layer).
fn open_clip(c: &CLIPTextConfig, dtype: FileDtype) -> Vec<Planned> {
    let (d, inter) = (c.hidden_size, c.intermediate_size);
    let mk = |name: String, key: String, shape: &[usize]| Planned::random(format!("{OPEN_CLIP}{name}"), &key, shape, dtype);
    let mut v = vec![
        mk("token_embedding.weight".into(), "text_model.embeddings.token_embedding.weight".into(), &[c.vocab_size, d]),
        mk("positional_embedding".into(), "text_model.embeddings.position_embedding.weight".into(), &[c.max_position_embeddings, d]),
        mk("ln_final.weight".into(), "text_model.final_layer_norm.weight".into(), &[d]),
        mk("ln_final.bias".into(), "text_model.final_layer_norm.bias".into(), &[d]),
    ];
    for i in 0..=c.num_hidden_layers {
        let r = format!("transformer.resblocks.{i}");
        // the dropped last resblock has no diffusers name: its LDM name keys its stream
        let canon = |m: &str| if i < c.num_hidden_layers { format!("text_model.encoder.layers.{i}.{m}") } else { format!("{OPEN_CLIP}{r}.{m}") };
        for (ldm, m, shape) in [
            ("ln_1.weight", "layer_norm1.weight", vec![d]),
            ("ln_1.bias", "layer_norm1.bias", vec![d]),
            ("ln_2.weight", "layer_norm2.weight", vec![d]),
            ("ln_2.bias", "layer_norm2.bias", vec![d]),
            ("attn.out_proj.weight", "self_attn.out_proj.weight", vec![d, d]),
            ("attn.out_proj.bias", "self_attn.out_proj.bias", vec![d]),
            ("mlp.c_fc.weight", "mlp.fc1.weight", vec![inter, d]),
            ("mlp.c_fc.bias", "mlp.fc1.bias", vec![inter]),
            ("mlp.c_proj.weight", "mlp.fc2.weight", vec![d, inter]),
            ("mlp.c_proj.bias", "mlp.fc2.bias", vec![d]),
        ] {
            v.push(mk(format!("{r}.{ldm}"), canon(m), &shape));
        }
        for (leaf, shape) in [("weight", vec![d, d]), ("bias", vec![d])] {
            let parts = ["q_proj", "k_proj", "v_proj"].iter().map(|p| (canon(&format!("self_attn.{p}.{leaf}")), shape.clone())).collect();
            let mut fused = shape.clone();
            fused[0] *= 3;
            v.push(Planned { name: format!("{OPEN_CLIP}{r}.attn.in_proj_{leaf}"), dtype, shape: fused, fill: Fill::Random(parts) });
        }
    }
    v.push(Planned::random(format!("{OPEN_CLIP}text_projection"), &format!("{OPEN_CLIP}text_projection"), &[d, d], dtype));
    v.push(Planned { name: format!("{OPEN_CLIP}logit_scale"), dtype, shape: vec![], fill: Fill::Values(vec![100f32.ln()]) });
    v
}

/// Every tensor of the single file: UNet, VAE and text encoder under LDM names (the same random
/// streams as the diffusers folder), plus the buffers real checkpoints carry.
pub fn plan(unet: &[ParamSpec], vae: &[ParamSpec], text: &[ParamSpec], text_config: &CLIPTextConfig, open_clip_text: bool, dtype: FileDtype) -> Vec<Planned> {
    let layout = UNetLayout::of(unet);
    let mut v: Vec<Planned> = unet
        .iter()
        .map(|s| {
            let name = layout.ldm_key(&s.key).unwrap_or_else(|| panic!("no LDM name for UNet parameter `{}`", s.key));
            Planned::random(format!("{UNET}{name}"), &s.key, &s.shape, dtype)
        })
        .collect();
    let up_blocks = vae.iter().filter_map(|s| s.key.strip_prefix("decoder.up_blocks.")?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1);
    v.extend(vae.iter().map(|s| {
        let name = vae_ldm_key(&s.key, up_blocks).unwrap_or_else(|| panic!("no LDM name for VAE parameter `{}`", s.key));
        Planned { name: format!("{VAE}{name}"), dtype, shape: vae_ldm_shape(&s.key, &s.shape), fill: Fill::Random(vec![(s.key.clone(), s.shape.clone())]) }
    }));
    if open_clip_text {
        v.extend(open_clip(text_config, dtype));
    } else {
        v.extend(text.iter().map(|s| Planned::random(format!("{CLIP}{}", s.key), &s.key, &s.shape, dtype)));
        let n = text_config.max_position_embeddings;
        v.push(Planned { name: format!("{CLIP}text_model.embeddings.position_ids"), dtype: FileDtype::I64, shape: vec![1, n], fill: Fill::Int((0..n as i64).collect()) });
    }
    v.extend(schedule_buffers(dtype));
    v
}
