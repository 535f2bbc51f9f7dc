//! A loaded Stable Diffusion model: prompt encoder (tokenizer + CLIP), UNet, VAE and the
//! scheduler configuration of the model folder.

use burn::tensor::Device;

use super::PromptEncoder;
use crate::models::{AutoencoderKL, UNet2DConditionModel};
use crate::schedulers::{SchedulerConfig, SchedulerKind};

/// The components of a diffusers `StableDiffusionPipeline`. Cloning is cheap: device tensors
/// are shared handles (a trainer works on a clone while the session keeps generating).
#[derive(Clone)]
pub struct StableDiffusion {
    pub prompt: PromptEncoder,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    /// `scheduler/scheduler_config.json` as found (defaults resolve per scheduler class).
    pub scheduler_config: SchedulerConfig,
    /// The class named in the scheduler config (SD 1.5: PNDM).
    pub default_scheduler: SchedulerKind,
    /// Name shown in image metadata (the folder name).
    pub name: String,
    /// `unet/config.json`'s `sample_size` (latent pixels; 64 for SD 1.5).
    pub sample_size: usize,
}

impl StableDiffusion {
    pub fn device(&self) -> Device {
        self.prompt.text_encoder.device()
    }

    /// `2 ** (len(vae.block_out_channels) - 1)` (8 for SD).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.downsampling_factor()
    }

    pub fn latent_channels(&self) -> usize {
        self.unet.in_channels()
    }

    /// `unet.sample_size * vae_scale_factor` (512 for SD 1.5, 256 for the tiny model).
    pub fn default_size(&self) -> usize {
        self.sample_size * self.vae_scale_factor()
    }
}
