//! Streaming safetensors writer: the header first (every tensor's name, dtype, shape and byte
//! range, from a plan), then each tensor's bytes generated and written in small chunks, so
//! memory holds one chunk, never a tensor or the model (SD 1.5 is 4.3 GB in f32).
//!
//! Random values come from one seeded stream per parameter, keyed by the parameter's canonical
//! (diffusers / transformers) name: the same seed gives the same numbers whichever file layout
//! they are written in (a diffusers folder, its fp16 variant, an original-LDM single file whose
//! OpenCLIP `in_proj` fuses three parameters).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::weights::{ParamSpec, TensorMap, WeightStorage};

/// Element type of a tensor in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileDtype {
    F32,
    F16,
    I64,
}

impl FileDtype {
    pub fn size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
            Self::I64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "F16",
            Self::F32 => "F32",
            Self::I64 => "I64",
        }
    }
}

/// Where a tensor's values come from.
#[derive(Clone, Debug)]
pub enum Fill {
    /// Random parameters, concatenated along dim 0: `(canonical key, canonical shape)` each
    /// (one part for almost every tensor; q, k, v for OpenCLIP's fused `in_proj`).
    Random(Vec<(String, Vec<usize>)>),
    /// Given values (small buffers: the LDM noise schedule, `logit_scale`).
    Values(Vec<f32>),
    /// Integers (`position_ids`), written as I64 whatever the file's float type.
    Int(Vec<i64>),
}

/// One tensor of a file to write.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Its name in the file.
    pub name: String,
    pub dtype: FileDtype,
    pub shape: Vec<usize>,
    pub fill: Fill,
}

impl Planned {
    /// A random parameter stored under `name`, drawn from the stream of canonical `key`.
    pub fn random(name: impl Into<String>, key: &str, shape: &[usize], dtype: FileDtype) -> Self {
        Self { name: name.into(), dtype, shape: shape.to_vec(), fill: Fill::Random(vec![(key.to_string(), shape.to_vec())]) }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
    /// Parameters (floats) it holds: buffers of integers are not parameters.
    pub fn parameters(&self) -> u64 {
        if matches!(self.fill, Fill::Random(_)) { self.numel() as u64 } else { 0 }
    }
}

/// The random stream of one parameter: xorshift64 seeded (through SplitMix64) from `seed` and the
/// FNV-1a hash of its canonical key, stable across platforms and Rust versions. Each uniform takes
/// 23 bits of one step.
pub struct ParamRng {
    state: u64,
}

impl ParamRng {
    pub fn new(seed: u64, key: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // SplitMix64 finaliser of (hash, seed): a well-mixed, nonzero xorshift state
        let mut z = (h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self { state: (z ^ (z >> 31)) | 1 }
    }

    /// Fills `out` with `U(-1, 1) * scale + offset`. Written as plain indexed loops of shifts,
    /// xors and one multiply-add (no calls), so it stays fast in unoptimised builds: each step's
    /// top 23 bits become the mantissa of a float in [1, 2), then `u = 2x - 3`.
    pub fn fill(&mut self, out: &mut [f32], scale: f32, offset: f32) {
        let n = out.len();
        {
            // SAFETY: f32 and u32 have the same size and alignment and every bit pattern is a valid
            // u32; this view is the only access to `out` until the block ends.
            let words: &mut [u32] = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u32>(), n) };
            let mut x = self.state;
            let mut i = 0;
            while i < n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                words[i] = ((x >> 41) as u32) | 0x3f80_0000;
                i += 1;
            }
            self.state = x;
        }
        let (a, b) = (2.0 * scale, offset - 3.0 * scale);
        let mut i = 0;
        while i < n {
            out[i] = out[i] * a + b;
            i += 1;
        }
    }
}

/// `(scale, offset)` of a parameter's uniform values: matrices and kernels
/// `U(-1, 1) * 1.7 / sqrt(fan_in)` (about unit variance out for unit variance in), norm scales
/// `1 + 0.1 U`, everything else (biases) `0.05 U`.
pub fn init_scale(key: &str, shape: &[usize]) -> (f32, f32) {
    if shape.len() >= 2 {
        (1.7 / (shape[1..].iter().product::<usize>().max(1) as f32).sqrt(), 0.0)
    } else if key.contains("norm") && key.ends_with("weight") {
        (0.1, 1.0)
    } else {
        (0.05, 0.0)
    }
}

/// Values per chunk generated and written at once.
const CHUNK: usize = 1 << 16;

/// Calls `sink` with the values of parameter `key` (canonical shape `shape`), chunk by chunk.
pub fn param_values(seed: u64, key: &str, shape: &[usize], sink: &mut dyn FnMut(&[f32]) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut rng = ParamRng::new(seed, key);
    let (scale, offset) = init_scale(key, shape);
    let n: usize = shape.iter().product();
    let mut buf = vec![0f32; CHUNK.min(n)];
    let mut left = n;
    while left > 0 {
        let m = left.min(CHUNK);
        rng.fill(&mut buf[..m], scale, offset);
        sink(&buf[..m])?;
        left -= m;
    }
    Ok(())
}

/// IEEE binary16 bits of one f32 (round to nearest, ties to even; overflow to infinity), what
/// `half::f16::from_f32` gives, written with plain integer operations.
pub fn f16_bits(bits: u32) -> u16 {
    let sign = ((bits >> 16) & 0x8000) as u16;
    let e = ((bits >> 23) & 0xff) as i32;
    let m = bits & 0x007f_ffff;
    if e == 0xff {
        return sign | 0x7c00 | if m != 0 { 0x0200 } else { 0 };
    }
    let he = e - 127 + 15;
    if he >= 0x1f {
        return sign | 0x7c00;
    }
    if he <= 0 {
        if he < -10 {
            return sign;
        }
        let m = m | 0x0080_0000;
        let shift = (14 - he) as u32;
        let mut hm = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        if rem > halfway || (rem == halfway && (hm & 1) == 1) {
            hm += 1;
        }
        return sign | hm as u16;
    }
    let mut h = ((he as u32) << 10) | (m >> 13);
    let rem = m & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && (h & 1) == 1) {
        h += 1;
    }
    sign | h as u16
}

/// [`f16_bits`] of every value (plain indexed loop: fast unoptimised too).
pub fn f32_to_f16_bits(values: &[f32], out: &mut [u16]) {
    // SAFETY: f32 and u32 have the same size and alignment; a read-only view
    let words: &[u32] = unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u32>(), values.len()) };
    let n = words.len().min(out.len());
    let mut i = 0;
    while i < n {
        let w = words[i];
        let b = w & 0x7fff_ffff;
        // normal f16 results (2^-14 <= |x| < 65520): round the mantissa to nearest even, rebias
        // the exponent (a mantissa carry moves into the exponent, as it should); else the full path
        out[i] = if b >= 0x3880_0000 && b < 0x477f_f000 {
            let r = (b + 0x0fff + ((b >> 13) & 1)) >> 13;
            ((w >> 16) & 0x8000) as u16 | (r - (112 << 10)) as u16
        } else {
            f16_bits(w)
        };
        i += 1;
    }
}

/// `values` as little-endian bytes of `dtype` (F32 / F16) into `bytes`.
fn encode(values: &[f32], dtype: FileDtype, f16: &mut Vec<u16>, bytes: &mut Vec<u8>) {
    bytes.clear();
    match dtype {
        FileDtype::F32 if cfg!(target_endian = "little") => {
            // SAFETY: an f32 slice viewed as its bytes (little-endian: the file's order)
            bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 4) });
        }
        FileDtype::F16 if cfg!(target_endian = "little") => {
            if f16.len() < values.len() {
                f16.resize(values.len(), 0);
            }
            let f16 = &mut f16[..values.len()];
            f32_to_f16_bits(values, f16);
            // SAFETY: a u16 slice viewed as its bytes (little-endian: the file's order)
            bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(f16.as_ptr().cast::<u8>(), f16.len() * 2) });
        }
        FileDtype::F32 => values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        FileDtype::F16 => values.iter().for_each(|v| bytes.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        FileDtype::I64 => values.iter().for_each(|v| bytes.extend_from_slice(&(*v as i64).to_le_bytes())),
    }
}

/// The parameters `specs` with the values [`param_values`] gives them, on `device` as `storage`
/// says, and their total count (tests and in-memory experiments; files are written with
/// [`write`]).
pub fn random_weights(name: &str, specs: &[ParamSpec], device: &Device, seed: u64, storage: WeightStorage) -> (TensorMap, usize) {
    let mut count = 0;
    let tensors = specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            count += n;
            let mut v = Vec::with_capacity(n);
            param_values(seed, &s.key, &s.shape, &mut |c| {
                v.extend_from_slice(c);
                Ok(())
            })
            .expect("no I/O");
            let t = Tensor::<1>::from_data(TensorData::new(v, [n]), device);
            let t = if storage == WeightStorage::F16 && s.shape.len() >= 2 { t.cast(burn::tensor::DType::F16) } else { t };
            (s.clone(), t)
        })
        .collect();
    (TensorMap::from_tensors(name, tensors), count)
}

/// The header bytes (length prefix included) of a file holding `plan` in file order, and that
/// order: tensors sorted like the `safetensors` Python package sorts them (wider dtypes first,
/// then by name).
pub fn header(plan: &[Planned]) -> (Vec<u8>, Vec<usize>, u64) {
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by(|&a, &b| plan[b].dtype.size().cmp(&plan[a].dtype.size()).then_with(|| plan[a].name.cmp(&plan[b].name)));
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for &i in &order {
        let t = &plan[i];
        let end = offset + t.nbytes();
        map.insert(t.name.clone(), serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut json = serde_json::to_string(&serde_json::Value::Object(map)).expect("json");
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    (bytes, order, offset)
}

/// Total size of the file [`write`] writes for `plan`.
pub fn file_size(plan: &[Planned]) -> u64 {
    let (h, _, data) = header(plan);
    h.len() as u64 + data
}

/// Writes `plan` to `path`: the header, then every tensor streamed (random parameters from
/// `seed`). `header_only` leaves the data a hole of zeros (a sparse file of the real size).
/// `progress(done, total)` in bytes after each tensor. Returns the file size.
pub fn write(path: &Path, plan: &[Planned], seed: u64, header_only: bool, progress: &mut dyn FnMut(u64, u64)) -> std::io::Result<u64> {
    let (head, order, data) = header(plan);
    let total = head.len() as u64 + data;
    let file = File::create(path)?;
    if header_only {
        let mut f = file;
        f.write_all(&head)?;
        f.set_len(total)?;
        progress(total, total);
        return Ok(total);
    }
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&head)?;
    let mut done = head.len() as u64;
    let mut bytes = Vec::with_capacity(CHUNK * 4);
    let mut f16 = Vec::with_capacity(CHUNK);
    for &i in &order {
        let t = &plan[i];
        let dtype = t.dtype;
        let mut put = |vals: &[f32]| -> std::io::Result<()> {
            encode(vals, dtype, &mut f16, &mut bytes);
            w.write_all(&bytes)
        };
        match &t.fill {
            Fill::Random(parts) => {
                for (key, shape) in parts {
                    param_values(seed, key, shape, &mut put)?;
                }
            }
            Fill::Values(v) => {
                assert_eq!(v.len(), t.numel(), "{}", t.name);
                put(v)?;
            }
            Fill::Int(v) => {
                assert_eq!(v.len(), t.numel(), "{}", t.name);
                let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.write_all(&raw)?;
            }
        }
        done += t.nbytes();
        progress(done, total);
    }
    w.flush()?;
    let written = w.get_ref().metadata()?.len();
    if written != total {
        return Err(std::io::Error::other(format!("wrote {written} bytes, planned {total}")));
    }
    Ok(total)
}
