//! Loading model components from any byte source (file natively, `Blob` in the browser):
//! config JSON text + weights -> a module on a device. The native folder helpers are in
//! [`crate::native`]; the browser ones in `crate::web`.

use burn::tensor::Device;

use crate::error::Error;
use crate::models::{AutoencoderKL, AutoencoderKLConfig, CLIPTextConfig, CLIPTextModel, UNet2DConditionConfig, UNet2DConditionModel};
use crate::weights::{ByteSource, SafetensorsHeader, WeightStorage, load_params};

/// Loads a `CLIPTextModel` from its `config.json` text and a safetensors source, tensor by
/// tensor, stored as `storage` says; `progress(done, total, key)` after each tensor.
pub async fn load_text_encoder<S: ByteSource>(
    config_json: &str,
    config_file: &str,
    weights: &S,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<CLIPTextModel, Error> {
    let config = CLIPTextConfig::from_json(config_json, config_file)?;
    let header = SafetensorsHeader::read(weights).await?;
    load_text_encoder_from(&config, &header, weights, device, storage, progress).await
}

/// Loads a `CLIPTextModel` whose tensors `header` locates in `weights` (a file's own header, or a
/// component of an [`crate::weights::LdmCheckpoint`]); `progress(done, total, key)` after each.
pub async fn load_text_encoder_from<S: ByteSource>(
    config: &CLIPTextConfig,
    header: &SafetensorsHeader,
    weights: &S,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<CLIPTextModel, Error> {
    let specs = CLIPTextModel::param_specs(config);
    let mut map = load_params(weights, header, CLIPTextModel::NAME, &specs, device, storage, progress).await?;
    let model = CLIPTextModel::from_map(config, &mut map);
    debug_assert!(map.remaining().is_empty());
    Ok(model)
}

/// Loads a `UNet2DConditionModel` from its `config.json` text and a safetensors source, tensor
/// by tensor; `progress(done, total, key)` after each tensor.
pub async fn load_unet<S: ByteSource>(
    config_json: &str,
    config_file: &str,
    weights: &S,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<UNet2DConditionModel, Error> {
    let config = UNet2DConditionConfig::from_json(config_json, config_file)?;
    let header = SafetensorsHeader::read(weights).await?;
    load_unet_from(&config, &header, weights, device, storage, progress).await
}

/// Loads a `UNet2DConditionModel` whose tensors `header` locates in `weights` (a file's own header, or a
/// component of an [`crate::weights::LdmCheckpoint`]); `progress(done, total, key)` after each.
pub async fn load_unet_from<S: ByteSource>(
    config: &UNet2DConditionConfig,
    header: &SafetensorsHeader,
    weights: &S,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<UNet2DConditionModel, Error> {
    let specs = UNet2DConditionModel::param_specs(config);
    let mut map = load_params(weights, header, UNet2DConditionModel::NAME, &specs, device, storage, progress).await?;
    let model = UNet2DConditionModel::from_map(config, &mut map);
    debug_assert!(map.remaining().is_empty());
    Ok(model)
}

/// Loads an `AutoencoderKL` from its `config.json` text and a safetensors source, tensor by
/// tensor (legacy attention key names are accepted); `progress(done, total, key)` after each.
pub async fn load_vae<S: ByteSource>(
    config_json: &str,
    config_file: &str,
    weights: &S,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<AutoencoderKL, Error> {
    let config = AutoencoderKLConfig::from_json(config_json, config_file)?;
    let header = SafetensorsHeader::read(weights).await?;
    load_vae_from(&config, &header, weights, device, storage, progress).await
}

/// Loads an `AutoencoderKL` whose tensors `header` locates in `weights` (a file's own header, or a
/// component of an [`crate::weights::LdmCheckpoint`]); `progress(done, total, key)` after each.
pub async fn load_vae_from<S: ByteSource>(
    config: &AutoencoderKLConfig,
    header: &SafetensorsHeader,
    weights: &S,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<AutoencoderKL, Error> {
    let specs = AutoencoderKL::param_specs(config);
    let mut map = load_params(weights, header, AutoencoderKL::NAME, &specs, device, storage, progress).await?;
    let model = AutoencoderKL::from_map(config, &mut map);
    debug_assert!(map.remaining().is_empty());
    Ok(model)
}

/// `sample_size` of a UNet config (an int, or `[h, w]`: the height), 64 when absent.
pub fn unet_sample_size(config_json: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(config_json).unwrap_or_default();
    match &v["sample_size"] {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(64) as usize,
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()).unwrap_or(64) as usize,
        _ => 64,
    }
}
