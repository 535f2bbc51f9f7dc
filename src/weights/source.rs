//! Random-access byte sources for weight files: a native file here, a browser `Blob` in
//! `crate::web`. Reads are per tensor, so memory holds at most one tensor's bytes at a time.

use std::future::Future;

use crate::error::WeightsError;

/// A file-like object that can be read at any offset.
pub trait ByteSource {
    /// File name used in error messages.
    fn name(&self) -> &str;
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Reads exactly `len` bytes at `offset`.
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = Result<Vec<u8>, WeightsError>>;
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::ByteSource;
    use crate::error::WeightsError;

    /// A weights file on disk, read with seek + read per tensor.
    pub struct FileSource {
        name: String,
        len: u64,
        file: Mutex<File>,
    }

    impl FileSource {
        pub fn open(path: &Path) -> Result<Self, WeightsError> {
            let name = path.display().to_string();
            let io = |e: std::io::Error| WeightsError::Io { file: name.clone(), reason: e.to_string() };
            let file = File::open(path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            Ok(Self { name, len, file: Mutex::new(file) })
        }
    }

    impl ByteSource for FileSource {
        fn name(&self) -> &str {
            &self.name
        }
        fn len(&self) -> u64 {
            self.len
        }
        async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, WeightsError> {
            let mut f = self.file.lock().expect("file lock");
            let mut buf = vec![0u8; len];
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|e| WeightsError::Io { file: self.name.clone(), reason: format!("reading {len} bytes at {offset}: {e}") })?;
            Ok(buf)
        }
    }

    /// Finds the weights file of a diffusers component folder (`text_encoder/`, `unet/`, `vae/`):
    /// `model.safetensors` or `diffusion_pytorch_model.safetensors`, or with `variant = Some("fp16")`
    /// their `.fp16.safetensors` variants. Without a variant, falls back to the fp16 variant when it
    /// is the only file (as users often download only that one).
    pub fn find_weights_file(dir: &Path, variant: Option<&str>) -> Result<PathBuf, WeightsError> {
        let stems = ["model", "diffusion_pytorch_model"];
        let mut order: Vec<String> = Vec::new();
        match variant {
            Some(v) => stems.iter().for_each(|s| order.push(format!("{s}.{v}.safetensors"))),
            None => {
                stems.iter().for_each(|s| order.push(format!("{s}.safetensors")));
                stems.iter().for_each(|s| order.push(format!("{s}.fp16.safetensors")));
            }
        }
        for name in &order {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(WeightsError::NoWeightsFile { dir: dir.display().to_string(), tried: order })
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{FileSource, find_weights_file};
