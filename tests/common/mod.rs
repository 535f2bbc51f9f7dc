//! Shared helpers for the integration tests: golden safetensors reading, comparisons, the
//! fixture paths, and writing small safetensors files.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

pub mod alloc;
pub mod cli;
pub mod reference_clip;
pub mod sd2;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny_sd1() -> PathBuf {
    fixtures().join("tiny-sd1")
}

/// A tensor read from a golden file, as f64 (floats) or i64 (ints) values.
#[derive(Clone, Debug)]
pub struct Golden {
    pub shape: Vec<usize>,
    pub f: Vec<f32>,
    pub i: Vec<i64>,
}

pub struct GoldenFile {
    pub tensors: HashMap<String, Golden>,
    pub metadata: HashMap<String, String>,
}

impl GoldenFile {
    pub fn get(&self, k: &str) -> &Golden {
        self.tensors.get(k).unwrap_or_else(|| panic!("golden tensor {k} missing"))
    }
}

pub fn read_golden(path: &Path) -> GoldenFile {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let (f, i) = match view.dtype() {
            Dtype::F32 => (d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), vec![]),
            Dtype::I64 => (vec![], d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
            Dtype::U8 => (vec![], d.iter().map(|&b| b as i64).collect()),
            other => panic!("unexpected dtype {other:?}"),
        };
        tensors.insert(name, Golden { shape: view.shape().to_vec(), f, i });
    }
    GoldenFile { tensors, metadata: meta.metadata().clone().unwrap_or_default() }
}

/// Max |a - b|, asserting equal lengths.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32) {
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max abs diff {d:.3e} (atol {atol:.0e})");
    assert!(d <= atol, "{what}: max abs diff {d} > {atol}");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite values");
}

/// A tensor to write: name, dtype, shape, raw little-endian bytes.
pub type Blob = (String, Dtype, Vec<usize>, Vec<u8>);

pub fn f32_blob(name: &str, shape: &[usize], v: &[f32]) -> Blob {
    (name.into(), Dtype::F32, shape.to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

pub fn write_safetensors(path: &Path, blobs: &[Blob], metadata: Option<HashMap<String, String>>) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = blobs
        .iter()
        .map(|(k, dt, s, b)| (k.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, metadata, path).unwrap();
}

/// Every tensor of a safetensors file as raw blobs (to rewrite it modified).
pub fn read_blobs(path: &Path) -> Vec<Blob> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<Blob> = st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies a directory tree (fixture model folders into temp dirs).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift), for weights built in tests.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}
