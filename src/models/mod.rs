//! Model definitions. Type names are the diffusers/transformers class names and field names the
//! PyTorch attribute names, so safetensors keys load by construction (see `crate::weights`).

pub mod clip;
pub mod nn;

pub use clip::{CLIPTextConfig, CLIPTextModel, CLIPTextOutput};
