//! Matching a file's tensors to the parameters a model expects, then uploading them one by one.

use std::collections::{HashMap, HashSet};

use burn::tensor::{Device, Tensor, TensorData};

use super::header::{SafetensorsHeader, TensorEntry, WeightDtype};
use super::keys::canonical_key;
use super::source::ByteSource;
use crate::error::{Shape, WeightsError};

/// A parameter a model expects: canonical key and shape (PyTorch layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub key: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn new(key: impl Into<String>, shape: &[usize]) -> Self {
        Self { key: key.into(), shape: shape.to_vec() }
    }
}

/// Device tensors by canonical key, stored flat (`[numel]`) and reshaped when a module takes them.
pub struct TensorMap {
    pub file: String,
    tensors: HashMap<String, (Tensor<1>, Vec<usize>)>,
}

impl TensorMap {
    /// Takes the tensor `key` as rank `D`. The loader has already checked every key and shape,
    /// so a failure here is a bug in a model's `param_specs`.
    pub fn take<const D: usize>(&mut self, key: &str) -> Tensor<D> {
        let (t, shape) = self
            .tensors
            .remove(key)
            .unwrap_or_else(|| panic!("parameter `{key}` was not declared in param_specs"));
        let dims: [usize; D] = shape.clone().try_into().unwrap_or_else(|_| panic!("`{key}` has rank {}, taken as {D}", shape.len()));
        t.reshape(dims)
    }

    /// A map of tensors made in code (benchmarks with random weights): `(spec, flat tensor)`.
    pub fn from_tensors(name: impl Into<String>, tensors: Vec<(ParamSpec, Tensor<1>)>) -> Self {
        Self { file: name.into(), tensors: tensors.into_iter().map(|(s, t)| (s.key, (t, s.shape))).collect() }
    }

    /// Keys not taken yet (should be empty after a module is built).
    pub fn remaining(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// Converts raw little-endian bytes of `dtype` to f32.
/// How float weights are kept on the device. Compute is always f32 (see
/// [`crate::models::nn::compute_f32`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightStorage {
    /// Every tensor in f32 (4 bytes per weight).
    #[default]
    F32,
    /// Matrices and convolution kernels (every tensor of rank >= 2) in f16, half the memory;
    /// vectors (biases, norms) stay f32. Needs a device with f16 buffers (WebGPU `shader-f16`).
    F16,
}

impl std::str::FromStr for WeightStorage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            o => Err(format!("unknown weight storage `{o}`: use f32 or f16")),
        }
    }
}

// safetensors stores little-endian values; wasm32 and every supported native target are
// little-endian, so the bytes are the values: one bulk copy (bytemuck, any alignment) and, where
// the dtype changes, half's slice conversions instead of a per-value loop.
const _: () = assert!(cfg!(target_endian = "little"), "weights are read as little-endian values");

fn to_f16(bytes: &[u8], dtype: WeightDtype) -> Vec<half::f16> {
    use half::slice::HalfFloatSliceExt;
    match dtype {
        WeightDtype::F16 => bytemuck::pod_collect_to_vec(bytes),
        WeightDtype::F32 => {
            let v: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
            let mut out = vec![half::f16::ZERO; v.len()];
            out.convert_from_f32_slice(&v);
            out
        }
        WeightDtype::BF16 => to_f32(bytes, dtype).into_iter().map(half::f16::from_f32).collect(),
    }
}

fn to_f32(bytes: &[u8], dtype: WeightDtype) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    match dtype {
        WeightDtype::F32 => bytemuck::pod_collect_to_vec(bytes),
        WeightDtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes).to_f32_vec(),
        WeightDtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(bytes).to_f32_vec(),
    }
}

/// Reads one tensor's values to host memory as f32 (small tensors: embeddings, test data).
pub async fn read_tensor_f32<S: ByteSource>(source: &S, entry: &TensorEntry) -> Result<Vec<f32>, WeightsError> {
    let dtype = entry.dtype.ok_or_else(|| WeightsError::UnsupportedDtype {
        file: source.name().to_string(),
        key: entry.name.clone(),
        actual: entry.dtype_name.clone(),
    })?;
    let bytes = source.read(entry.start, entry.len as usize).await?;
    Ok(to_f32(&bytes, dtype))
}

/// Loads the parameters `specs` of `model` (a type name, for key rules and messages) from
/// `source`: checks that every expected key exists with the expected shape and a float dtype,
/// that the file has no unexpected keys, then reads and uploads the tensors one at a time in file
/// order. `progress(done, total, key)` is called after each tensor; when it returns `false` the
/// load stops there with [`WeightsError::Cancelled`].
pub async fn load_params<S: ByteSource>(
    source: &S,
    header: &SafetensorsHeader,
    model: &str,
    specs: &[ParamSpec],
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize, &str) -> bool,
) -> Result<TensorMap, WeightsError> {
    let file = header.file.clone();
    // canonical key -> file entry
    let mut by_key: HashMap<String, &TensorEntry> = HashMap::new();
    for entry in header.tensors.values() {
        if let Some(k) = canonical_key(model, &entry.name) {
            by_key.insert(k, entry);
        }
    }
    let expected: HashSet<&str> = specs.iter().map(|s| s.key.as_str()).collect();
    let missing: Vec<(String, Shape)> = specs
        .iter()
        .filter(|s| !by_key.contains_key(&s.key))
        .map(|s| (s.key.clone(), Shape(s.shape.clone())))
        .collect();
    if !missing.is_empty() {
        return Err(WeightsError::MissingKeys { file, model: model.into(), missing });
    }
    let mut unexpected: Vec<String> = by_key
        .iter()
        .filter(|(k, _)| !expected.contains(k.as_str()))
        .map(|(_, e)| e.name.clone())
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(WeightsError::UnexpectedKeys { file, model: model.into(), unexpected });
    }
    let mut plan: Vec<(&ParamSpec, &TensorEntry, WeightDtype)> = Vec::with_capacity(specs.len());
    for spec in specs {
        let entry = by_key[&spec.key];
        if entry.shape != spec.shape {
            return Err(WeightsError::ShapeMismatch {
                file,
                model: model.into(),
                key: entry.name.clone(),
                expected: Shape(spec.shape.clone()),
                actual: Shape(entry.shape.clone()),
            });
        }
        let dtype = entry.dtype.ok_or_else(|| WeightsError::UnsupportedDtype {
            file: file.clone(),
            key: entry.name.clone(),
            actual: entry.dtype_name.clone(),
        })?;
        plan.push((spec, entry, dtype));
    }
    plan.sort_by_key(|(_, e, _)| e.start);
    let total = plan.len();
    let mut tensors = HashMap::with_capacity(total);
    for (i, (spec, entry, dtype)) in plan.into_iter().enumerate() {
        let bytes = source.read(entry.start, entry.len as usize).await?;
        let t = if storage == WeightStorage::F16 && spec.shape.len() >= 2 {
            let values = to_f16(&bytes, dtype);
            drop(bytes);
            let n = values.len();
            let options = burn::tensor::TensorCreationOptions::new(device.clone()).with_dtype(burn::tensor::DType::F16);
            Tensor::<1>::from_data(TensorData::new(values, [n]), options)
        } else {
            let values = to_f32(&bytes, dtype);
            drop(bytes);
            let n = values.len();
            Tensor::<1>::from_data(TensorData::new(values, [n]), device)
        };
        tensors.insert(spec.key.clone(), (t, spec.shape.clone()));
        if !progress(i + 1, total, &spec.key) {
            return Err(WeightsError::Cancelled);
        }
    }
    Ok(TensorMap { file, tensors })
}
