//! Text encoders of original-LDM checkpoints -> transformers' `CLIPTextModel` keys and config.
//! Ports diffusers' `convert_ldm_clip_checkpoint` (SD 1: `cond_stage_model.transformer.*` is a
//! transformers CLIP already, only the prefix goes) and `convert_open_clip_checkpoint` (SD 2:
//! OpenCLIP ViT-H `cond_stage_model.model.*`).
//!
//! OpenCLIP, `N` resblocks:
//!
//! | before (OpenCLIP) | after (transformers) |
//! |---|---|
//! | `token_embedding.weight` | `text_model.embeddings.token_embedding.weight` |
//! | `positional_embedding` | `text_model.embeddings.position_embedding.weight` |
//! | `transformer.resblocks.{i}.ln_1` / `ln_2` | `text_model.encoder.layers.{i}.layer_norm1` / `layer_norm2` |
//! | `transformer.resblocks.{i}.attn.in_proj_weight` `[3d, d]` | `...layers.{i}.self_attn.{q,k,v}_proj.weight`, rows `[0,d)`, `[d,2d)`, `[2d,3d)` |
//! | `transformer.resblocks.{i}.attn.in_proj_bias` `[3d]` | `...self_attn.{q,k,v}_proj.bias` |
//! | `transformer.resblocks.{i}.attn.out_proj` | `...self_attn.out_proj` |
//! | `transformer.resblocks.{i}.mlp.c_fc` / `c_proj` | `...mlp.fc1` / `fc2` |
//! | `ln_final` | `text_model.final_layer_norm` |
//! | `transformer.resblocks.{N-1}.*`, `text_projection`, `logit_scale` | unused: SD 2 conditions on the penultimate layer, so diffusers' text encoder has `N-1` layers (23 for ViT-H) |

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{Rule, Shapes};

/// SD 1 (`cond_stage_model.transformer.` removed): add `text_model.` where the file (old
/// transformers) has none; the `position_ids` buffer is dropped.
pub fn clip_rule(key: &str) -> Rule {
    if key.ends_with("embeddings.position_ids") {
        Rule::Ignore
    } else if key.starts_with("text_model.") {
        Rule::To(key.to_string())
    } else {
        Rule::To(format!("text_model.{key}"))
    }
}

/// Renames inside an OpenCLIP resblock.
const RESBLOCK: &[(&str, &str)] = &[
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("attn.out_proj.", "self_attn.out_proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
];

/// SD 2 (`cond_stage_model.model.` removed); `blocks` = number of resblocks in the file (the last
/// one is dropped).
pub fn open_clip_rule(key: &str, blocks: usize) -> Rule {
    match key {
        "token_embedding.weight" => return Rule::To("text_model.embeddings.token_embedding.weight".into()),
        "positional_embedding" => return Rule::To("text_model.embeddings.position_embedding.weight".into()),
        "text_projection" | "logit_scale" | "attn_mask" => return Rule::Ignore,
        _ => {}
    }
    if let Some(leaf) = key.strip_prefix("ln_final.") {
        return Rule::To(format!("text_model.final_layer_norm.{leaf}"));
    }
    if key.starts_with("visual.") {
        return Rule::Ignore;
    }
    let Some((i, rest)) = key.strip_prefix("transformer.resblocks.").and_then(|r| r.split_once('.')) else {
        return Rule::Unknown;
    };
    let Ok(i) = i.parse::<usize>() else { return Rule::Unknown };
    if i + 1 == blocks {
        return Rule::Ignore;
    }
    let p = format!("text_model.encoder.layers.{i}");
    let leaf = match rest {
        "attn.in_proj_weight" => "weight",
        "attn.in_proj_bias" => "bias",
        _ => {
            return RESBLOCK
                .iter()
                .find_map(|(a, b)| rest.strip_prefix(a).map(|r| Rule::To(format!("{p}.{b}{r}"))))
                .unwrap_or(Rule::Unknown);
        }
    };
    Rule::Split(["q_proj", "k_proj", "v_proj"].iter().map(|q| format!("{p}.self_attn.{q}.{leaf}")).collect())
}

/// Number of OpenCLIP resblocks in the file.
pub fn open_clip_blocks(s: &Shapes) -> usize {
    let ids: BTreeSet<usize> =
        s.keys().filter_map(|k| k.strip_prefix("transformer.resblocks.")?.split('.').next()?.parse().ok()).collect();
    ids.len()
}

/// `CLIPTextConfig` from the converted shapes (keys as diffusers names them, `text_model.` prefix):
/// `num_attention_heads` = width / 64 (CLIP ViT-L/14 and OpenCLIP ViT-H/14 both use head dim 64),
/// `hidden_act` quick_gelu (OpenAI CLIP) or gelu (OpenCLIP).
pub fn text_encoder_config(s: &Shapes, open_clip: bool) -> Result<Value, String> {
    let tok = "text_model.embeddings.token_embedding.weight";
    let (vocab, width) = (s.dim(tok, 0)?, s.dim(tok, 1)?);
    if width % 64 != 0 {
        return Err(format!(
            "a text encoder of width {width} (not a multiple of 64): its number of attention heads cannot be inferred"
        ));
    }
    let layers: BTreeSet<usize> =
        s.keys().filter_map(|k| k.strip_prefix("text_model.encoder.layers.")?.split('.').next()?.parse().ok()).collect();
    Ok(json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": s.dim("text_model.encoder.layers.0.mlp.fc1.weight", 0)?,
        "num_hidden_layers": layers.len(),
        "num_attention_heads": width / 64,
        "max_position_embeddings": s.dim("text_model.embeddings.position_embedding.weight", 0)?,
        "hidden_act": if open_clip { "gelu" } else { "quick_gelu" },
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clip_keys() {
        let to = |k: &str| match open_clip_rule(k, 24) {
            Rule::To(s) => s,
            _ => panic!("{k}"),
        };
        assert_eq!(to("transformer.resblocks.3.ln_2.bias"), "text_model.encoder.layers.3.layer_norm2.bias");
        assert_eq!(to("transformer.resblocks.0.mlp.c_proj.weight"), "text_model.encoder.layers.0.mlp.fc2.weight");
        assert_eq!(to("ln_final.weight"), "text_model.final_layer_norm.weight");
        assert_eq!(to("positional_embedding"), "text_model.embeddings.position_embedding.weight");
        match open_clip_rule("transformer.resblocks.22.attn.in_proj_bias", 24) {
            Rule::Split(v) => assert_eq!(v[2], "text_model.encoder.layers.22.self_attn.v_proj.bias"),
            _ => panic!(),
        }
        assert!(matches!(open_clip_rule("transformer.resblocks.23.attn.in_proj_weight", 24), Rule::Ignore));
        assert!(matches!(open_clip_rule("text_projection", 24), Rule::Ignore));
        assert!(matches!(clip_rule("text_model.embeddings.position_ids"), Rule::Ignore));
        assert!(matches!(clip_rule("encoder.layers.0.mlp.fc1.weight"), Rule::To(s) if s == "text_model.encoder.layers.0.mlp.fc1.weight"));
    }
}
