//! Original-LDM single-file checkpoints (`v1-5-pruned-emaonly.safetensors`,
//! `v2-1_512-ema-pruned.safetensors`, as AUTOMATIC1111/ComfyUI use) read as diffusers components:
//! ports the Stable Diffusion 1.x/2.x part of diffusers' `loaders/single_file_utils.py`.
//!
//! The conversion is a pure function over the file's header (names, shapes, byte ranges); no
//! tensor is read. [`LdmCheckpoint::from_header`] splits the file into one virtual
//! [`SafetensorsHeader`] per component whose entries carry the diffusers key and point into the
//! LDM file's bytes; [`crate::weights::load_params`] then streams them tensor by tensor exactly as
//! it streams a diffusers file (natively or from a browser `Blob`). Renames need no bytes; fused
//! OpenCLIP `in_proj` tensors are split into q/k/v as three byte ranges (rows of a row-major
//! tensor are contiguous); 1x1-conv VAE attention weights only change shape. The rules, with
//! before -> after tables: [`unet`] (`model.diffusion_model.*`), [`vae`]
//! (`first_stage_model.*`), [`clip`] (`cond_stage_model.transformer.*` for SD 1,
//! `cond_stage_model.model.*` for SD 2). Everything else in the file is ignored: `model_ema.*`
//! (EMA copies; like diffusers' default the non-EMA `model.diffusion_model` weights load),
//! `betas`/`alphas_cumprod`/... schedule buffers, `cond_stage_model.model.logit_scale`, ...
//!
//! Configs are inferred from shapes (see [`LdmCheckpoint::unet_config`] and friends); what shapes
//! cannot tell (`norm_num_groups`, `sample_size`, v-prediction) takes SD's values or a caller's
//! override.

pub mod clip;
pub mod unet;
pub mod vae;

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::header::{SafetensorsHeader, TensorEntry};
use crate::error::WeightsError;
use crate::prediction_type::PredictionType;

/// What becomes of one LDM tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Renamed (same bytes; VAE attention weights also lose 1x1 dims).
    To(String),
    /// Split into equal parts along dim 0, one key per part (OpenCLIP `in_proj` -> q, k, v).
    Split(Vec<String>),
    /// Not a parameter of the diffusers model (buffers, the dropped last OpenCLIP layer).
    Ignore,
    /// No rule: kept under its LDM name so loading reports it as unexpected.
    Unknown,
}

/// Shapes of one component's tensors by key, for config inference.
#[derive(Clone, Debug, Default)]
pub struct Shapes(BTreeMap<String, Vec<usize>>);

impl Shapes {
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
    /// Dimension `d` of tensor `key`, or why not.
    pub fn dim(&self, key: &str, d: usize) -> Result<usize, String> {
        let shape = self.0.get(key).ok_or_else(|| format!("no tensor `{key}`"))?;
        shape.get(d).copied().ok_or_else(|| format!("`{key}` has shape {shape:?}, no dimension {d}"))
    }
    pub fn rank(&self, key: &str) -> Result<usize, String> {
        self.0.get(key).map(Vec::len).ok_or_else(|| format!("no tensor `{key}`"))
    }
}

/// Which Stable Diffusion generation a checkpoint is (from its text encoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdVersion {
    /// CLIP ViT-L/14 (`cond_stage_model.transformer.*`).
    V1,
    /// OpenCLIP ViT-H/14 (`cond_stage_model.model.*`).
    V2,
}

/// Key prefixes of the components in an LDM file.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";

/// An LDM single file seen as three diffusers components (headers whose entries point into it).
#[derive(Clone, Debug)]
pub struct LdmCheckpoint {
    pub file: String,
    pub version: SdVersion,
    /// UNet tensors under diffusers names.
    pub unet: SafetensorsHeader,
    /// VAE tensors under diffusers names.
    pub vae: SafetensorsHeader,
    /// Text-encoder tensors under transformers names (`text_model.` prefix).
    pub text_encoder: SafetensorsHeader,
    unet_shapes: Shapes,
    vae_shapes: Shapes,
}

/// Tensors of `header` under `prefix`, the prefix removed.
fn under<'a>(header: &'a SafetensorsHeader, prefix: &str) -> Vec<(&'a str, &'a TensorEntry)> {
    let mut v: Vec<_> = header.tensors.iter().filter_map(|(k, e)| Some((k.strip_prefix(prefix)?, e))).collect();
    v.sort_by_key(|(k, _)| *k);
    v
}

fn shapes(entries: &[(&str, &TensorEntry)]) -> Shapes {
    Shapes(entries.iter().map(|(k, e)| (k.to_string(), e.shape.clone())).collect())
}

/// Applies `rule` to every entry; `name` is the component's name in messages.
fn convert(
    header: &SafetensorsHeader,
    prefix: &str,
    name: &str,
    entries: &[(&str, &TensorEntry)],
    rule: impl Fn(&str) -> Rule,
    reshape: impl Fn(&str, &[usize]) -> Vec<usize>,
) -> SafetensorsHeader {
    let mut tensors = HashMap::new();
    let mut put = |key: String, mut e: TensorEntry| {
        e.name = key.clone();
        tensors.insert(key, e);
    };
    for (k, e) in entries {
        match rule(k) {
            Rule::To(key) => {
                let mut e = (*e).clone();
                e.shape = reshape(&key, &e.shape);
                put(key, e);
            }
            Rule::Split(keys) if e.shape.first().is_some_and(|&d| d % keys.len() == 0) && e.len % keys.len() as u64 == 0 => {
                let n = keys.len();
                let part = e.len / n as u64;
                for (i, key) in keys.into_iter().enumerate() {
                    let mut p = (*e).clone();
                    p.shape[0] /= n;
                    p.start += i as u64 * part;
                    p.len = part;
                    put(key, p);
                }
            }
            Rule::Ignore => {}
            Rule::Split(_) | Rule::Unknown => put(format!("{prefix}{k}"), (*e).clone()),
        }
    }
    SafetensorsHeader { file: format!("{} ({name}, LDM keys)", header.file), tensors, metadata: header.metadata.clone() }
}

fn inferred(file: &str, what: &str, r: Result<serde_json::Value, String>) -> Result<String, WeightsError> {
    r.map(|v| serde_json::to_string_pretty(&v).expect("json")).map_err(|reason| WeightsError::UnsupportedCheckpoint {
        file: file.to_string(),
        what: format!("inferring the {what} config: {reason}"),
        hint: "Give the config.json files of a diffusers model that matches the checkpoint.".into(),
    })
}

impl LdmCheckpoint {
    /// True when `header` looks like an LDM checkpoint (has `model.diffusion_model.*` keys).
    pub fn detect(header: &SafetensorsHeader) -> bool {
        header.tensors.keys().any(|k| k.starts_with(UNET_PREFIX))
    }

    /// Splits an LDM file's header into its components, converting every key (no I/O).
    pub fn from_header(header: &SafetensorsHeader) -> Result<Self, WeightsError> {
        let file = header.file.clone();
        let not = |reason: String| WeightsError::NotACheckpoint { file: file.clone(), reason };
        let unsupported = |what: &str, hint: &str| WeightsError::UnsupportedCheckpoint { file: file.clone(), what: what.into(), hint: hint.into() };
        if header.tensors.keys().any(|k| k.starts_with("conditioner.embedders.")) {
            return Err(unsupported("an SDXL checkpoint (`conditioner.embedders.*`)", "SDXL needs a different UNet and two text encoders."));
        }
        let unet = under(header, UNET_PREFIX);
        if unet.is_empty() {
            let mut names: Vec<&String> = header.tensors.keys().collect();
            names.sort();
            let some: Vec<String> = names.iter().take(4).map(|k| format!("`{k}`")).collect();
            let hint = if header.tensors.contains_key("conv_in.weight") || header.tensors.keys().any(|k| k.starts_with("text_model.")) {
                " (it looks like one component of a diffusers model: pass the model folder)"
            } else {
                ""
            };
            return Err(not(format!("it has no `{UNET_PREFIX}*` (UNet) tensors among its {} ({}){hint}", names.len(), some.join(", "))));
        }
        let vae = under(header, VAE_PREFIX);
        if vae.is_empty() {
            return Err(not(format!("it has a UNet but no `{VAE_PREFIX}*` (VAE) tensors")));
        }
        let unet_shapes = shapes(&unet);
        if let Ok(c) = unet_shapes.dim("input_blocks.0.0.weight", 1).map_err(|_| ()) {
            if c != 4 {
                return Err(unsupported(
                    &format!("a UNet with {c} input channels (inpainting: 9, instruct-pix2pix: 8)"),
                    "Use the text-to-image version of the model.",
                ));
            }
        }
        let lpb = unet::layers_per_block(&unet_shapes).map_err(|r| not(r))?;
        let vae_shapes = shapes(&vae);
        let ups = vae::up_blocks(&vae_shapes);
        let (version, text_encoder) = Self::text_encoder_of(header)?;
        let unet_rule = |k: &str| unet::unet_key(k, lpb).map_or(Rule::Unknown, Rule::To);
        let vae_rule = |k: &str| vae::vae_key(k, ups).map_or(Rule::Unknown, Rule::To);
        Ok(Self {
            version,
            unet: convert(header, UNET_PREFIX, "UNet", &unet, unet_rule, |_, s| s.to_vec()),
            vae: convert(header, VAE_PREFIX, "VAE", &vae, vae_rule, vae::squeeze_attention),
            text_encoder,
            unet_shapes,
            vae_shapes,
            file,
        })
    }

    /// The text encoder of an LDM header alone: the SD version it implies and its tensors under
    /// transformers names (no I/O).
    pub fn text_encoder_of(header: &SafetensorsHeader) -> Result<(SdVersion, SafetensorsHeader), WeightsError> {
        let clip = under(header, CLIP_PREFIX);
        let open_clip = under(header, OPEN_CLIP_PREFIX);
        if !clip.is_empty() {
            Ok((SdVersion::V1, convert(header, CLIP_PREFIX, "text encoder", &clip, clip::clip_rule, |_, s| s.to_vec())))
        } else if !open_clip.is_empty() {
            let blocks = clip::open_clip_blocks(&shapes(&open_clip));
            let rule = |k: &str| clip::open_clip_rule(k, blocks);
            Ok((SdVersion::V2, convert(header, OPEN_CLIP_PREFIX, "text encoder", &open_clip, rule, |_, s| s.to_vec())))
        } else {
            Err(WeightsError::NotACheckpoint {
                file: header.file.clone(),
                reason: format!("it has no text encoder (`{CLIP_PREFIX}*` or `{OPEN_CLIP_PREFIX}*`)"),
            })
        }
    }

    /// Inferred `text_encoder/config.json` for a converted text-encoder header (see
    /// [`Self::text_encoder_of`]).
    pub fn text_encoder_config_of(version: SdVersion, text_encoder: &SafetensorsHeader) -> Result<String, WeightsError> {
        let s = Shapes(text_encoder.tensors.iter().map(|(k, e)| (k.clone(), e.shape.clone())).collect());
        inferred(&text_encoder.file, "text encoder", clip::text_encoder_config(&s, version == SdVersion::V2))
    }

    fn inferred(&self, what: &str, r: Result<serde_json::Value, String>) -> Result<String, WeightsError> {
        inferred(&self.file, what, r)
    }

    /// Inferred `unet/config.json` (diffusers keys). `sample_size` 64 (512 px), or 96 (768 px)
    /// for SD 2 with `prediction` v_prediction (the 768-v models), as diffusers' defaults.
    pub fn unet_config(&self, prediction: Option<PredictionType>) -> Result<String, WeightsError> {
        let sd2 = self.version == SdVersion::V2;
        let size = if sd2 && prediction == Some(PredictionType::VPrediction) { 96 } else { 64 };
        self.inferred("UNet", unet::unet_config(&self.unet_shapes, sd2, size))
    }

    /// Inferred `vae/config.json`.
    pub fn vae_config(&self) -> Result<String, WeightsError> {
        self.inferred("VAE", vae::vae_config(&self.vae_shapes))
    }

    /// Inferred `text_encoder/config.json` (transformers `CLIPTextConfig`).
    pub fn text_encoder_config(&self) -> Result<String, WeightsError> {
        Self::text_encoder_config_of(self.version, &self.text_encoder)
    }

    /// `scheduler/scheduler_config.json` of the SD 1.5 / SD 2.1 repositories (PNDM / DDIM,
    /// scaled_linear 0.00085..0.012, 1000 steps, `steps_offset` 1); `prediction_type` epsilon
    /// unless given (v-prediction cannot be seen in the weights).
    pub fn scheduler_config(&self, prediction: Option<PredictionType>) -> String {
        let class = if self.version == SdVersion::V2 { "DDIMScheduler" } else { "PNDMScheduler" };
        json!({
            "_class_name": class,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "clip_sample": false,
            "prediction_type": prediction.unwrap_or(PredictionType::Epsilon).as_str(),
        })
        .to_string()
    }

    /// The pad token of the checkpoint's tokenizer: `<|endoftext|>` for SD 1, `!` (id 0, as
    /// OpenCLIP pads) for SD 2. The BPE files are the same for both.
    pub fn pad_token(&self) -> &'static str {
        match self.version {
            SdVersion::V1 => "<|endoftext|>",
            SdVersion::V2 => "!",
        }
    }
}
