//! Key remapping between weight files and our module tree, in one place.
//! Our modules mirror diffusers/transformers attribute names, so almost every key loads as is.
//! The rules (file key -> canonical key):
//!
//! | rule | before | after |
//! |---|---|---|
//! | transformers 5 writes CLIP without the `text_model.` prefix | `encoder.layers.0.self_attn.q_proj.weight` | `text_model.encoder.layers.0.self_attn.q_proj.weight` |
//! | old diffusers VAEs (`AttentionBlock`, before 0.15) name the mid-block attention projections `query/key/value/proj_attn` | `decoder.mid_block.attentions.0.proj_attn.weight` | `decoder.mid_block.attentions.0.to_out.0.weight` |
//!
//! Buffers that some files carry but that are not parameters are ignored:
//! `text_model.embeddings.position_ids` (transformers < 4.31 saved it).

/// Prefixes a file may omit: `(prefix, model name)`.
const OPTIONAL_PREFIXES: &[(&str, &str)] = &[("text_model.", "CLIPTextModel")];

/// Renamed path segments `(model, old segment, new segment)`: a file key whose segment right
/// before the final `weight`/`bias` is the old one gets the new one.
/// `encoder.mid_block.attentions.0.query.bias` -> `encoder.mid_block.attentions.0.to_q.bias`.
const LEGACY_SEGMENTS: &[(&str, &str, &str)] = &[
    ("AutoencoderKL", "query", "to_q"),
    ("AutoencoderKL", "key", "to_k"),
    ("AutoencoderKL", "value", "to_v"),
    ("AutoencoderKL", "proj_attn", "to_out.0"),
];

/// Keys that are buffers, not parameters, and are skipped when found.
const IGNORED_SUFFIXES: &[&str] = &["embeddings.position_ids"];

/// Maps a file key to the canonical key of `model` (a type name such as `CLIPTextModel`),
/// or `None` when the key is a known non-parameter buffer.
pub fn canonical_key(model: &str, file_key: &str) -> Option<String> {
    if IGNORED_SUFFIXES.iter().any(|s| file_key.ends_with(s)) {
        return None;
    }
    for (m, old, new) in LEGACY_SEGMENTS {
        if *m != model {
            continue;
        }
        for leaf in ["weight", "bias"] {
            if let Some(head) = file_key.strip_suffix(&format!(".{old}.{leaf}")) {
                return Some(format!("{head}.{new}.{leaf}"));
            }
        }
    }
    for (prefix, m) in OPTIONAL_PREFIXES {
        if *m == model && !file_key.starts_with(prefix) {
            return Some(format!("{prefix}{file_key}"));
        }
    }
    Some(file_key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_prefix_is_added_once() {
        assert_eq!(canonical_key("CLIPTextModel", "final_layer_norm.weight").unwrap(), "text_model.final_layer_norm.weight");
        assert_eq!(canonical_key("CLIPTextModel", "text_model.final_layer_norm.weight").unwrap(), "text_model.final_layer_norm.weight");
        assert_eq!(canonical_key("UNet2DConditionModel", "conv_in.weight").unwrap(), "conv_in.weight");
        assert!(canonical_key("CLIPTextModel", "text_model.embeddings.position_ids").is_none());
    }

    #[test]
    fn legacy_vae_attention_names_map_to_diffusers_names() {
        let k = |key: &str| canonical_key("AutoencoderKL", key).unwrap();
        assert_eq!(k("decoder.mid_block.attentions.0.query.weight"), "decoder.mid_block.attentions.0.to_q.weight");
        assert_eq!(k("encoder.mid_block.attentions.0.key.bias"), "encoder.mid_block.attentions.0.to_k.bias");
        assert_eq!(k("encoder.mid_block.attentions.0.value.weight"), "encoder.mid_block.attentions.0.to_v.weight");
        assert_eq!(k("decoder.mid_block.attentions.0.proj_attn.bias"), "decoder.mid_block.attentions.0.to_out.0.bias");
        assert_eq!(k("decoder.mid_block.attentions.0.to_q.weight"), "decoder.mid_block.attentions.0.to_q.weight");
        // other models keep such names
        assert_eq!(canonical_key("UNet2DConditionModel", "x.key.weight").unwrap(), "x.key.weight");
    }
}
