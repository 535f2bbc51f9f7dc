//! What runs between user input and the models: prompt encoding (tokenizer + text encoder +
//! textual-inversion tokens), text-to-image generation, image output. Training and suppression
//! build on it.

pub mod denoise;
pub mod png_out;
mod prompt;
pub mod rng;
mod stable_diffusion;
pub mod txt2img;

pub use prompt::{PromptEncoder, Tokenized};
pub use rng::NoiseRng;
pub use stable_diffusion::StableDiffusion;
pub use denoise::{Denoise, run_to_end};
pub use txt2img::{GenerateParams, Generated, Txt2Img, decode_latents, generate};
