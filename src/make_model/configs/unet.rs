//! `unet/config.json` of each public repository, key for key (diffusers sorts the keys).

use serde_json::{Value, json};

use super::super::Arch;

const DOWN: [&str; 4] = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
const UP: [&str; 4] = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];

/// runwayml/stable-diffusion-v1-5 `unet/config.json` (diffusers 0.6.0).
fn sd15() -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.6.0",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false,
        "cross_attention_dim": 768,
        "down_block_types": DOWN,
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": UP
    })
}

/// stabilityai/stable-diffusion-2-1 (768-v: `sample_size` 96, `upcast_attention`) and
/// stable-diffusion-2-1-base (512: `sample_size` 64) `unet/config.json` (diffusers 0.10.0.dev0).
fn sd21(sample_size: u64, upcast_attention: bool) -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.10.0.dev0",
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false,
        "cross_attention_dim": 1024,
        "down_block_types": DOWN,
        "downsample_padding": 1,
        "dual_cross_attention": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "sample_size": sample_size,
        "up_block_types": UP,
        "upcast_attention": upcast_attention,
        "use_linear_projection": true
    })
}

/// stabilityai/sd-turbo `unet/config.json` (SD 2.1 architecture at 512 px, converted with
/// diffusers 0.24.0.dev0, which writes every key; `upcast_attention` null as the conversion
/// script leaves it).
fn sd_turbo() -> Value {
    // two halves (one `json!` this long exceeds the macro recursion limit), keys sorted
    let mut v = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.24.0.dev0",
        "_name_or_path": "/home/patrick/sd-turbo/unet",
        "act_fn": "silu",
        "addition_embed_type": null,
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": null,
        "attention_head_dim": [5, 10, 20, 20],
        "attention_type": "default",
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false,
        "class_embed_type": null,
        "class_embeddings_concat": false,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 1024,
        "cross_attention_norm": null,
        "down_block_types": DOWN,
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": false,
        "encoder_hid_dim": null,
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2
    });
    let rest = json!({
        "mid_block_only_cross_attention": null,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": null,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": null,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": null,
        "sample_size": 64,
        "time_cond_proj_dim": null,
        "time_embedding_act_fn": null,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "transformer_layers_per_block": 1,
        "up_block_types": UP,
        "upcast_attention": null,
        "use_linear_projection": true
    });
    if let (Some(a), Value::Object(b)) = (v.as_object_mut(), rest) {
        a.extend(b);
    }
    v
}

/// nota-ai/bk-sdm-small and bk-sdm-tiny `unet/config.json` (Kim et al. 2023, distilled from SD
/// v1.4): one resnet/attention pair per down stage (`layers_per_block` 1, so two per up stage)
/// and no mid block; Tiny also drops the innermost (1280-channel, attention-free) stage.
fn bk_sdm(tiny: bool) -> Value {
    let (channels, down, up): (&[u64], &[&str], &[&str]) = if tiny {
        (&[320, 640, 1280], &DOWN[..3], &["CrossAttnUpBlock2D"; 3])
    } else {
        (&[320, 640, 1280, 1280], &DOWN, &UP)
    };
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.15.0.dev0",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": channels,
        "center_input_sample": false,
        "class_embed_type": null,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 768,
        "down_block_types": down,
        "downsample_padding": 1,
        "dual_cross_attention": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "mid_block_type": null,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": null,
        "resnet_time_scale_shift": "default",
        "sample_size": 64,
        "time_cond_proj_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "up_block_types": up,
        "upcast_attention": false,
        "use_linear_projection": false
    })
}

/// The architecture's `unet/config.json`.
pub fn config(arch: Arch) -> Value {
    match arch {
        Arch::Sd15 => sd15(),
        Arch::Sd21 => sd21(96, true),
        Arch::Sd21Base => sd21(64, false),
        Arch::SdTurbo => sd_turbo(),
        Arch::BkSdmSmall => bk_sdm(false),
        Arch::BkSdmTiny => bk_sdm(true),
    }
}
