//! Key remapping between weight files and our module tree, in one place.
//! Our modules mirror diffusers/transformers attribute names, so almost every key loads as is.
//! The rules (file key -> canonical key):
//!
//! | rule | before | after |
//! |---|---|---|
//! | transformers 5 writes CLIP without the `text_model.` prefix | `encoder.layers.0.self_attn.q_proj.weight` | `text_model.encoder.layers.0.self_attn.q_proj.weight` |
//!
//! Buffers that some files carry but that are not parameters are ignored:
//! `text_model.embeddings.position_ids` (transformers < 4.31 saved it).

/// Prefixes a file may omit: `(prefix, model name)`.
const OPTIONAL_PREFIXES: &[(&str, &str)] = &[("text_model.", "CLIPTextModel")];

/// Keys that are buffers, not parameters, and are skipped when found.
const IGNORED_SUFFIXES: &[&str] = &["embeddings.position_ids"];

/// Maps a file key to the canonical key of `model` (a type name such as `CLIPTextModel`),
/// or `None` when the key is a known non-parameter buffer.
pub fn canonical_key(model: &str, file_key: &str) -> Option<String> {
    if IGNORED_SUFFIXES.iter().any(|s| file_key.ends_with(s)) {
        return None;
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
}
