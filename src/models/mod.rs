//! Model definitions. Type names are the diffusers/transformers class names and field names the
//! PyTorch attribute names, so safetensors keys load by construction (see `crate::weights`).

pub mod attention;
pub mod attention_vjp;
pub mod clip;
pub mod embeddings;
pub mod nn;
pub mod resnet;
pub mod unet;
pub mod vae;

pub use attention::{AttnCapture, DEFAULT_QUERY_CHUNK_SIZE};
pub use clip::{CLIPTextConfig, CLIPTextModel, CLIPTextOutput};
pub use unet::{UNet2DConditionConfig, UNet2DConditionModel, UNetCapture, UNetTape};
pub use vae::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussianDistribution, VaeCapture};
