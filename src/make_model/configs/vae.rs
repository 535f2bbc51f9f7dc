//! `vae/config.json` of each public repository (all share the SD VAE, 83.7M parameters).

use serde_json::{Value, json};

use super::super::Arch;

const DOWN: [&str; 4] = ["DownEncoderBlock2D"; 4];
const UP: [&str; 4] = ["UpDecoderBlock2D"; 4];

/// The SD 1.x / 2.x repositories' file (diffusers 0.6 / 0.8: no `scaling_factor` key, its
/// default 0.18215 applies).
fn legacy(version: &str, name_or_path: Option<&str>, sample_size: u64) -> Value {
    let mut v = json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": version,
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": DOWN,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "up_block_types": UP
    });
    if let Some(p) = name_or_path {
        v["_name_or_path"] = p.into();
    }
    v
}

/// stabilityai/sd-turbo (diffusers 0.24.0.dev0 writes every key).
fn sd_turbo() -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.24.0.dev0",
        "_name_or_path": "/home/patrick/sd-turbo/vae",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": DOWN,
        "force_upcast": true,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "scaling_factor": 0.18215,
        "up_block_types": UP
    })
}

/// nota-ai/bk-sdm-* (the SD v1.4 VAE, saved with diffusers 0.15).
fn bk_sdm() -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.15.0.dev0",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": DOWN,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "scaling_factor": 0.18215,
        "up_block_types": UP
    })
}

/// The architecture's `vae/config.json`.
pub fn config(arch: Arch) -> Value {
    match arch {
        Arch::Sd15 => legacy("0.6.0", None, 512),
        Arch::Sd21 => legacy("0.8.0", Some("hf-models/stable-diffusion-v2-768x768/vae"), 768),
        Arch::Sd21Base => legacy("0.10.0.dev0", Some("hf-models/stable-diffusion-v2-base/vae"), 512),
        Arch::SdTurbo => sd_turbo(),
        Arch::BkSdmSmall | Arch::BkSdmTiny => bk_sdm(),
    }
}

/// Whether the repository's VAE weights still use the pre-0.15 `AttentionBlock` names
/// (`query`/`key`/`value`/`proj_attn`; the loader maps them, see `weights/keys.rs`).
pub fn legacy_attention_names(arch: Arch) -> bool {
    matches!(arch, Arch::Sd15 | Arch::Sd21 | Arch::Sd21Base)
}
