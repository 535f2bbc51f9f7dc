//! Weight loading from diffusers folders: a safetensors header is read first, then every tensor
//! on its own (a byte range of the file or `Blob`) straight into device memory, so a 1.7 GB UNet
//! never sits whole in (wasm) memory. Ports the loading side of `safetensors` +
//! `ModelMixin.from_pretrained` (variant files, key prefixes) without holding the whole file.

mod header;
mod keys;
pub mod ldm;
mod load;
mod source;

pub use header::{SafetensorsHeader, TensorEntry, WeightDtype};
pub use keys::canonical_key;
pub use load::{ParamSpec, TensorMap, WeightStorage, load_params, read_tensor_f32};
pub use ldm::LdmCheckpoint;
pub use source::ByteSource;
#[cfg(not(target_arch = "wasm32"))]
pub use source::{FileSource, find_weights_file};
