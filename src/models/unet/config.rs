//! `UNet2DConditionModel`'s config (`unet/config.json`) and the per-block constructor arguments
//! diffusers' `__init__` derives from it.

use serde::Deserialize;
use serde_json::Value;

use super::blocks::BlockArgs;
use crate::error::ConfigError;
use crate::models::nn::Activation;
use crate::models::resnet::TimeEmbeddingNorm;

/// A config value given once for all blocks or as one value per down block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
    /// Anything else (nested lists, nulls): refused with the key's name.
    Other(Value),
}

impl<T: Clone> PerBlock<T> {
    fn resolve(&self, n: usize, key: &str) -> Result<Vec<T>, String> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); n]),
            Self::Each(v) if v.len() == n => Ok(v.clone()),
            Self::Each(v) => Err(format!("`{key}` has {} entries but there are {n} down blocks", v.len())),
            Self::Other(v) => Err(format!("unsupported `{key}`: {v} (expected a number or a list with one number per block)")),
        }
    }
}

/// `UNet2DConditionModel` config, deserialized from `unet/config.json` (unknown keys ignored,
/// missing keys take diffusers' defaults). Field names are the JSON keys.
///
/// Misnomer kept from diffusers: `attention_head_dim` is the **number of heads** of each block
/// (diffusers issue #2011); `num_attention_heads`, when present and not null, takes precedence.
#[derive(Clone, Debug, Deserialize)]
pub struct UNet2DConditionConfig {
    #[serde(default)]
    pub sample_size: Option<Value>,
    #[serde(default = "d_4")]
    pub in_channels: usize,
    #[serde(default = "d_4")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_down_block_types")]
    pub down_block_types: Vec<String>,
    /// `null`: no mid block.
    #[serde(default = "d_mid_block_type")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up_block_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_false_per_block")]
    pub only_cross_attention: PerBlock<bool>,
    #[serde(default = "d_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_2_per_block")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "d_1")]
    pub downsample_padding: usize,
    #[serde(default = "d_1f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_32")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d_1e5")]
    pub norm_eps: f64,
    #[serde(default = "d_1280_per_block")]
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "d_1_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Value>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<Value>,
    /// Number of heads per block (see the type's docs).
    #[serde(default = "d_8_per_block")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<Value>,
    #[serde(default)]
    pub addition_embed_type: Option<Value>,
    #[serde(default)]
    pub num_class_embeds: Option<Value>,
    /// `null` in some published configs (SD-Turbo); diffusers reads it as false.
    #[serde(default, deserialize_with = "null_as_false")]
    pub upcast_attention: bool,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Only used by block types not supported here (`ResnetDownsampleBlock2D`, ...).
    #[serde(default = "d_1f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<Value>,
    #[serde(default = "d_3")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_3")]
    pub conv_out_kernel: usize,
    #[serde(default = "d_default")]
    pub attention_type: String,
    #[serde(default)]
    pub cross_attention_norm: Option<Value>,
}

fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(<Option<bool> as serde::Deserialize>::deserialize(d)?.unwrap_or(false))
}

fn d_4() -> usize {
    4
}
fn d_1() -> usize {
    1
}
fn d_3() -> usize {
    3
}
fn d_32() -> Option<usize> {
    Some(32)
}
fn d_true() -> bool {
    true
}
fn d_1f() -> f64 {
    1.0
}
fn d_1e5() -> f64 {
    1e-5
}
fn d_silu() -> String {
    "silu".into()
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_down_block_types() -> Vec<String> {
    ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
}
fn d_up_block_types() -> Vec<String> {
    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
}
fn d_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_false_per_block() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn d_1_per_block() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn d_2_per_block() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_8_per_block() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn d_1280_per_block() -> PerBlock<usize> {
    PerBlock::One(1280)
}

/// Kind of a down block (`down_block_types`; a `UNetRes` prefix is dropped like diffusers does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownBlockType {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

/// Kind of an up block (`up_block_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpBlockType {
    CrossAttnUpBlock2D,
    UpBlock2D,
}

/// Kind of the mid block (`mid_block_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MidBlockType {
    UNetMidBlock2DCrossAttn,
    /// A single resnet, no attention.
    UNetMidBlock2D,
}

fn strip_unet_res(name: &str) -> &str {
    name.strip_prefix("UNetRes").unwrap_or(name)
}

impl UNet2DConditionConfig {
    /// Parses and checks a `config.json`; `file` names it in errors. Features this port does not
    /// implement are refused naming the key (class/addition embeddings as in SDXL, gated
    /// attention, Fourier time embedding, ...).
    pub fn from_json(text: &str, file: &str) -> Result<Self, ConfigError> {
        let c: Self = serde_json::from_str(text).map_err(|e| ConfigError::Invalid { file: file.into(), reason: e.to_string() })?;
        c.validate().map_err(|reason| ConfigError::Invalid { file: file.into(), reason })?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        let unsupported = |key: &str, v: &dyn std::fmt::Display| Err(format!("unsupported `{key}`: {v} (this UNet port supports SD 1.x/2.x UNets)"));
        for (key, v) in [
            ("class_embed_type", &self.class_embed_type),
            ("num_class_embeds", &self.num_class_embeds),
            ("addition_embed_type", &self.addition_embed_type),
            ("encoder_hid_dim_type", &self.encoder_hid_dim_type),
            ("time_cond_proj_dim", &self.time_cond_proj_dim),
            ("cross_attention_norm", &self.cross_attention_norm),
            ("reverse_transformer_layers_per_block", &self.reverse_transformer_layers_per_block),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
                return unsupported(key, v);
            }
        }
        if self.attention_type != "default" {
            return unsupported("attention_type", &self.attention_type);
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention", &true);
        }
        if self.time_embedding_type != "positional" {
            return unsupported("time_embedding_type", &self.time_embedding_type);
        }
        if !matches!(self.resnet_time_scale_shift.as_str(), "default" | "scale_shift") {
            return unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift);
        }
        for (key, act) in [
            ("act_fn", Some(&self.act_fn)),
            ("time_embedding_act_fn", self.time_embedding_act_fn.as_ref()),
            ("timestep_post_act", self.timestep_post_act.as_ref()),
        ] {
            if let Some(a) = act.filter(|a| Activation::parse(a).is_none()) {
                return unsupported(key, a);
            }
        }
        for t in &self.down_block_types {
            self.parse_down(t).ok_or_else(|| format!("unsupported `down_block_types` entry `{t}` (supported: CrossAttnDownBlock2D, DownBlock2D)"))?;
        }
        for t in &self.up_block_types {
            self.parse_up(t).ok_or_else(|| format!("unsupported `up_block_types` entry `{t}` (supported: CrossAttnUpBlock2D, UpBlock2D)"))?;
        }
        if let Some(t) = &self.mid_block_type
            && Self::parse_mid(t).is_none()
        {
            return Err(format!("unsupported `mid_block_type` `{t}` (supported: UNetMidBlock2DCrossAttn, UNetMidBlock2D, null)"));
        }
        let n = self.down_block_types.len();
        if n == 0 {
            return Err("`down_block_types` is empty".into());
        }
        if self.up_block_types.len() != n {
            return Err(format!("`up_block_types` has {} entries but `down_block_types` has {n}", self.up_block_types.len()));
        }
        if self.block_out_channels.len() != n {
            return Err(format!("`block_out_channels` has {} entries but `down_block_types` has {n}", self.block_out_channels.len()));
        }
        let groups = self.norm_num_groups.ok_or("`norm_num_groups` null is not supported")?;
        self.layers_per_block.resolve(n, "layers_per_block")?;
        self.transformer_layers_per_block.resolve(n, "transformer_layers_per_block")?;
        self.cross_attention_dim.resolve(n, "cross_attention_dim")?;
        self.only_cross_attention.resolve(n, "only_cross_attention")?;
        let heads = self.heads_per_block_checked()?;
        for (i, (&c, &h)) in self.block_out_channels.iter().zip(&heads).enumerate() {
            if c == 0 || groups == 0 || c % groups != 0 {
                return Err(format!("`block_out_channels[{i}]` = {c} is not divisible by `norm_num_groups` {groups}"));
            }
            if h == 0 || c % h != 0 {
                return Err(format!("`block_out_channels[{i}]` = {c} is not divisible by its head count {h} (`attention_head_dim`/`num_attention_heads`)"));
            }
        }
        for (key, k) in [("conv_in_kernel", self.conv_in_kernel), ("conv_out_kernel", self.conv_out_kernel)] {
            if k % 2 == 0 {
                return unsupported(key, &k);
            }
        }
        Ok(())
    }

    fn parse_down(&self, t: &str) -> Option<DownBlockType> {
        match strip_unet_res(t) {
            "CrossAttnDownBlock2D" => Some(DownBlockType::CrossAttnDownBlock2D),
            "DownBlock2D" => Some(DownBlockType::DownBlock2D),
            _ => None,
        }
    }

    fn parse_up(&self, t: &str) -> Option<UpBlockType> {
        match strip_unet_res(t) {
            "CrossAttnUpBlock2D" => Some(UpBlockType::CrossAttnUpBlock2D),
            "UpBlock2D" => Some(UpBlockType::UpBlock2D),
            _ => None,
        }
    }

    fn parse_mid(t: &str) -> Option<MidBlockType> {
        match t {
            "UNetMidBlock2DCrossAttn" => Some(MidBlockType::UNetMidBlock2DCrossAttn),
            "UNetMidBlock2D" => Some(MidBlockType::UNetMidBlock2D),
            _ => None,
        }
    }

    fn heads_per_block_checked(&self) -> Result<Vec<usize>, String> {
        let n = self.down_block_types.len();
        match &self.num_attention_heads {
            Some(h) => h.resolve(n, "num_attention_heads"),
            None => self.attention_head_dim.resolve(n, "attention_head_dim"),
        }
    }

    fn per_block<T: Clone>(v: &PerBlock<T>, n: usize) -> Vec<T> {
        v.resolve(n, "").expect("checked in from_json")
    }

    pub fn num_blocks(&self) -> usize {
        self.down_block_types.len()
    }

    /// Number of heads of each down block's transformers (`num_attention_heads` or, historically,
    /// `attention_head_dim`).
    pub fn heads_per_block(&self) -> Vec<usize> {
        self.heads_per_block_checked().expect("checked in from_json")
    }

    pub fn down_block_type(&self, i: usize) -> DownBlockType {
        self.parse_down(&self.down_block_types[i]).expect("checked in from_json")
    }

    pub fn up_block_type(&self, i: usize) -> UpBlockType {
        self.parse_up(&self.up_block_types[i]).expect("checked in from_json")
    }

    pub fn mid_block(&self) -> Option<MidBlockType> {
        self.mid_block_type.as_deref().map(|t| Self::parse_mid(t).expect("checked in from_json"))
    }

    pub fn act(&self) -> Activation {
        Activation::parse(&self.act_fn).expect("checked in from_json")
    }

    pub fn time_embed_act(&self) -> Option<Activation> {
        self.time_embedding_act_fn.as_deref().map(|a| Activation::parse(a).expect("checked in from_json"))
    }

    pub fn timestep_post_act(&self) -> Option<Activation> {
        self.timestep_post_act.as_deref().map(|a| Activation::parse(a).expect("checked in from_json"))
    }

    fn time_scale_shift(&self) -> TimeEmbeddingNorm {
        if self.resnet_time_scale_shift == "scale_shift" { TimeEmbeddingNorm::ScaleShift } else { TimeEmbeddingNorm::Default }
    }

    /// Width of the sinusoidal projection (`block_out_channels[0]`).
    pub fn timestep_input_dim(&self) -> usize {
        self.block_out_channels[0]
    }

    /// Width of the time embedding (`time_embedding_dim` or `4 * block_out_channels[0]`).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(4 * self.block_out_channels[0])
    }

    pub fn norm_groups(&self) -> usize {
        self.norm_num_groups.expect("checked in from_json")
    }

    fn base_args(&self) -> BlockArgs {
        BlockArgs {
            num_layers: 0,
            transformer_layers_per_block: 1,
            in_channels: 0,
            out_channels: 0,
            prev_output_channel: 0,
            temb_channels: self.time_embed_dim(),
            add_sampler: false,
            resnet_eps: self.norm_eps,
            resnet_act_fn: self.act(),
            resnet_groups: self.norm_groups(),
            cross_attention_dim: 0,
            num_attention_heads: 1,
            downsample_padding: self.downsample_padding,
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: false,
            upcast_attention: self.upcast_attention,
            resnet_time_scale_shift: self.time_scale_shift(),
            output_scale_factor: 1.0,
        }
    }

    /// Arguments of down block `i` (diffusers' `get_down_block` call).
    pub fn down_block_args(&self, i: usize) -> BlockArgs {
        let n = self.num_blocks();
        let boc = &self.block_out_channels;
        BlockArgs {
            num_layers: Self::per_block(&self.layers_per_block, n)[i],
            transformer_layers_per_block: Self::per_block(&self.transformer_layers_per_block, n)[i],
            in_channels: if i == 0 { boc[0] } else { boc[i - 1] },
            out_channels: boc[i],
            add_sampler: i != n - 1,
            cross_attention_dim: Self::per_block(&self.cross_attention_dim, n)[i],
            num_attention_heads: self.heads_per_block()[i],
            only_cross_attention: Self::per_block(&self.only_cross_attention, n)[i],
            ..self.base_args()
        }
    }

    /// Arguments of the mid block (diffusers' `get_mid_block` call; one transformer layer
    /// group, the last block's heads and widths).
    pub fn mid_block_args(&self) -> BlockArgs {
        let n = self.num_blocks();
        BlockArgs {
            num_layers: 1,
            transformer_layers_per_block: Self::per_block(&self.transformer_layers_per_block, n)[n - 1],
            in_channels: self.block_out_channels[n - 1],
            out_channels: self.block_out_channels[n - 1],
            cross_attention_dim: Self::per_block(&self.cross_attention_dim, n)[n - 1],
            num_attention_heads: self.heads_per_block()[n - 1],
            output_scale_factor: self.mid_block_scale_factor,
            ..self.base_args()
        }
    }

    /// Arguments of up block `i` (diffusers' `get_up_block` call: per-block lists reversed,
    /// `layers_per_block + 1` resnets).
    pub fn up_block_args(&self, i: usize) -> BlockArgs {
        let n = self.num_blocks();
        let rev = |v: Vec<usize>| v.into_iter().rev().collect::<Vec<_>>();
        let rboc = rev(self.block_out_channels.clone());
        let only_cross: Vec<bool> = Self::per_block(&self.only_cross_attention, n).into_iter().rev().collect();
        BlockArgs {
            num_layers: rev(Self::per_block(&self.layers_per_block, n))[i] + 1,
            transformer_layers_per_block: rev(Self::per_block(&self.transformer_layers_per_block, n))[i],
            in_channels: rboc[(i + 1).min(n - 1)],
            out_channels: rboc[i],
            prev_output_channel: if i == 0 { rboc[0] } else { rboc[i - 1] },
            add_sampler: i != n - 1,
            cross_attention_dim: rev(Self::per_block(&self.cross_attention_dim, n))[i],
            num_attention_heads: rev(self.heads_per_block())[i],
            only_cross_attention: only_cross[i],
            ..self.base_args()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sd15() {
        let c = UNet2DConditionConfig::from_json("{}", "config.json").unwrap();
        assert_eq!(c.block_out_channels, vec![320, 640, 1280, 1280]);
        assert_eq!(c.heads_per_block(), vec![8; 4]);
        assert_eq!(c.mid_block(), Some(MidBlockType::UNetMidBlock2DCrossAttn));
        let up = c.up_block_args(1);
        assert_eq!((up.in_channels, up.out_channels, up.prev_output_channel, up.num_layers), (640, 1280, 1280, 3));
    }

    #[test]
    fn null_mid_block_and_head_lists() {
        let c = UNet2DConditionConfig::from_json(
            r#"{"mid_block_type": null, "attention_head_dim": [5, 10, 20, 20], "num_attention_heads": null}"#,
            "c",
        )
        .unwrap();
        assert_eq!(c.mid_block(), None);
        assert_eq!(c.up_block_args(0).num_attention_heads, 20);
        assert_eq!(c.up_block_args(3).num_attention_heads, 5);
        let c = UNet2DConditionConfig::from_json(r#"{"attention_head_dim": 64, "num_attention_heads": [5, 10, 20, 20]}"#, "c").unwrap();
        assert_eq!(c.heads_per_block(), vec![5, 10, 20, 20]);
    }

    #[test]
    fn unsupported_features_name_the_key() {
        for (json, key) in [
            (r#"{"addition_embed_type": "text_time"}"#, "addition_embed_type"),
            (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
            (r#"{"attention_type": "gated"}"#, "attention_type"),
            (r#"{"transformer_layers_per_block": [[1, 2], [1, 2], [1, 2], [1, 2]]}"#, "transformer_layers_per_block"),
            (r#"{"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"]}"#, "down_block_types"),
        ] {
            let err = UNet2DConditionConfig::from_json(json, "unet/config.json").unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("unet/config.json"), "{err}");
        }
    }
}
