//! The safetensors header: `u64` little-endian length, then JSON `{name: {dtype, shape,
//! data_offsets}}` plus optional `__metadata__`. Parsed with the `safetensors` crate's own
//! `Metadata`, then checked against the file length (truncation) and each tensor's byte size.

use std::collections::HashMap;

use safetensors::Dtype;
use safetensors::tensor::Metadata;

use super::source::ByteSource;
use crate::error::{Shape, WeightsError};

/// Largest header we accept (the safetensors crate uses the same 100 MB bound).
const MAX_HEADER: u64 = 100_000_000;

/// Element types we can load (converted to the model's compute dtype on the way to the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
}

impl WeightDtype {
    pub fn size(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "F32",
            WeightDtype::F16 => "F16",
            WeightDtype::BF16 => "BF16",
        }
    }
}

/// One tensor of a safetensors file: where its bytes are.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// Name as stored in the file.
    pub name: String,
    /// Raw dtype name as in the header (`F32`, `F16`, `I64`, ...).
    pub dtype_name: String,
    /// Loadable dtype, `None` for types we cannot load as weights.
    pub dtype: Option<WeightDtype>,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the first byte in the file.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A parsed and validated safetensors header.
#[derive(Clone, Debug)]
pub struct SafetensorsHeader {
    pub file: String,
    pub tensors: HashMap<String, TensorEntry>,
    pub metadata: HashMap<String, String>,
}

impl SafetensorsHeader {
    /// Reads and validates the header of `source` (two small reads).
    pub async fn read<S: ByteSource>(source: &S) -> Result<Self, WeightsError> {
        let file = source.name().to_string();
        let corrupt = |reason: String| WeightsError::CorruptHeader { file: file.clone(), reason };
        let total = source.len();
        if total < 8 {
            return Err(corrupt(format!("the file has only {total} bytes")));
        }
        let n = u64::from_le_bytes(source.read(0, 8).await?.try_into().expect("8 bytes"));
        if n > MAX_HEADER || n + 8 > total {
            return Err(corrupt(format!("header length {n} does not fit in a file of {total} bytes")));
        }
        let bytes = source.read(8, n as usize).await?;
        let text = std::str::from_utf8(&bytes).map_err(|e| corrupt(format!("header is not UTF-8: {e}")))?;
        let meta: Metadata = serde_json::from_str(text).map_err(|e| corrupt(format!("header JSON: {e}")))?;
        Self::from_metadata(file, meta, 8 + n, total)
    }

    /// Builds the header from already parsed metadata; `data_start` is the absolute offset of the
    /// data section and `total` the file length.
    fn from_metadata(file: String, meta: Metadata, data_start: u64, total: u64) -> Result<Self, WeightsError> {
        let mut tensors = HashMap::new();
        for (name, info) in meta.tensors() {
            let (a, b) = info.data_offsets;
            let dtype_name = format!("{:?}", info.dtype);
            let dtype = match info.dtype {
                Dtype::F32 => Some(WeightDtype::F32),
                Dtype::F16 => Some(WeightDtype::F16),
                Dtype::BF16 => Some(WeightDtype::BF16),
                _ => None,
            };
            if b < a {
                return Err(WeightsError::CorruptHeader {
                    file,
                    reason: format!("tensor `{name}` has data_offsets [{a}, {b}] (end before start)"),
                });
            }
            let numel: u64 = info.shape.iter().map(|&d| d as u64).product();
            let expected = numel * dtype_bits(info.dtype) / 8;
            if expected != (b - a) as u64 {
                return Err(WeightsError::BadTensorSize {
                    file,
                    key: name.clone(),
                    dtype: dtype_name,
                    shape: Shape(info.shape.clone()),
                    expected_bytes: expected,
                    actual_bytes: (b - a) as u64,
                });
            }
            let end = data_start + b as u64;
            if end > total {
                return Err(WeightsError::Truncated { file, key: name.clone(), needed: end, actual: total });
            }
            tensors.insert(
                name.clone(),
                TensorEntry {
                    name: name.clone(),
                    dtype_name,
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + a as u64,
                    len: (b - a) as u64,
                },
            );
        }
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(Self { file, tensors, metadata })
    }
}

fn dtype_bits(d: Dtype) -> u64 {
    // `Dtype::bitsize` exists in safetensors 0.6; spelled out to stay independent of it.
    match d {
        Dtype::BOOL | Dtype::U8 | Dtype::I8 | Dtype::F8_E5M2 | Dtype::F8_E4M3 | Dtype::F8_E8M0 => 8,
        Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
        Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
        Dtype::I64 | Dtype::U64 | Dtype::F64 => 64,
        Dtype::F4 => 4,
        Dtype::F6_E2M3 | Dtype::F6_E3M2 => 6,
        _ => 8,
    }
}
