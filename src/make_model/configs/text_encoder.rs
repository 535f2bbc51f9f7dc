//! `text_encoder/config.json` (transformers `CLIPTextConfig`) of each public repository:
//! OpenAI CLIP ViT-L/14's text tower for SD 1.x and BK-SDM, OpenCLIP ViT-H/14's (1024 wide,
//! 23 of its 24 layers, gelu) for SD 2.x and SD-Turbo.

use serde_json::{Value, json};

use super::super::Arch;

/// CLIP ViT-L/14 text model as runwayml/stable-diffusion-v1-5 ships it (transformers 4.22).
fn clip_l(name_or_path: &str, transformers_version: &str) -> Value {
    json!({
        "_name_or_path": name_or_path,
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "torch_dtype": "float32",
        "transformers_version": transformers_version,
        "vocab_size": 49408
    })
}

/// OpenCLIP ViT-H/14 text tower as stabilityai/stable-diffusion-2-1 ships it.
fn open_clip_h(name_or_path: &str, transformers_version: &str) -> Value {
    json!({
        "_name_or_path": name_or_path,
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": 1024,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 23,
        "pad_token_id": 1,
        "projection_dim": 512,
        "torch_dtype": "float32",
        "transformers_version": transformers_version,
        "vocab_size": 49408
    })
}

/// The architecture's `text_encoder/config.json`.
pub fn config(arch: Arch) -> Value {
    match arch {
        Arch::Sd15 => clip_l("openai/clip-vit-large-patch14", "4.22.0.dev0"),
        Arch::BkSdmSmall | Arch::BkSdmTiny => clip_l("CompVis/stable-diffusion-v1-4", "4.27.4"),
        Arch::Sd21 => open_clip_h("hf-models/stable-diffusion-v2-768x768/text_encoder", "4.25.0.dev0"),
        Arch::Sd21Base => open_clip_h("hf-models/stable-diffusion-v2-base/text_encoder", "4.25.0.dev0"),
        Arch::SdTurbo => open_clip_h("/home/patrick/sd-turbo/text_encoder", "4.36.0.dev0"),
    }
}

/// Whether the repository's text-encoder file carries the `text_model.embeddings.position_ids`
/// buffer (transformers < 4.31 saved it; the loader skips it).
pub fn has_position_ids(arch: Arch) -> bool {
    !matches!(arch, Arch::SdTurbo)
}
