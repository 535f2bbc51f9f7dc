//! `model_index.json` (the `StableDiffusionPipeline` class and its components).
//!
//! The public repositories also list a `safety_checker` (SD 1.x) and a `feature_extractor`;
//! their folders are not written here (the safety checker is a 1.2 GB CLIP vision model this
//! library never runs), so both are `[null, null]` as diffusers writes for absent components,
//! with `requires_safety_checker: false`: diffusers loads the folder as it is.

use serde_json::{Value, json};

use super::super::Arch;
use super::scheduler;

fn diffusers_version(arch: Arch) -> &'static str {
    match arch {
        Arch::Sd15 => "0.6.0",
        Arch::Sd21 | Arch::Sd21Base => "0.10.0.dev0",
        Arch::SdTurbo => "0.24.0.dev0",
        Arch::BkSdmSmall | Arch::BkSdmTiny => "0.15.0.dev0",
    }
}

/// The architecture's `model_index.json`.
pub fn model_index(arch: Arch) -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version(arch),
        "feature_extractor": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", scheduler::class_name(arch)],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}
