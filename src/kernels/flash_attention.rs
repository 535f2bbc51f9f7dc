//! Launcher of `shaders/flash_attention.wgsl`: memory-efficient attention forward
//! (flash-attention's online softmax; no `[queries, keys]` probabilities in memory) for tensors
//! on a wgpu / WebGPU device. Its plain-burn reference is
//! [`crate::models::attention::sdpa_reference`]; `tests/flash_attention.rs` compares the two.
//!
//! Used by [`crate::models::attention::scaled_dot_product_attention`] when the inputs are f32
//! tensors of the cubecl (wgpu) backend without autodiff and no probabilities are wanted
//! (plain generation and VAE decode). Everything else (CPU, training, ITO, attention capture)
//! takes the reference path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::Cube;
use burn_cubecl::cubecl::prelude::KernelId;
use burn_cubecl::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn_cubecl::cubecl::{CubeCount, CubeDim};
use burn_cubecl::kernel::untile;
use burn_cubecl::template::{KernelSource, SourceKernel, SourceTemplate};
use burn_cubecl::tensor::CubeTensor;

const SOURCE: &str = include_str!("../../shaders/flash_attention.wgsl");

/// Queries per workgroup (one invocation per query row).
pub const WORKGROUP: u32 = 64;
/// Largest head dimension the kernel is instantiated for (its registers hold two rows of it).
pub const MAX_HEAD_DIM: usize = 256;
/// Workgroup memory for the staged K and V tiles: WebGPU's default
/// `maxComputeWorkgroupStorageSize` (16 KiB) less room for the kernel's own scalars.
const TILE_BYTES: usize = 16_384 - 256;

static ENABLED: AtomicBool = AtomicBool::new(true);
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Kernel launches so far in this process (tests and benches check that it ran).
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Turns the kernel on or off process-wide (on by default). Off: every attention takes the
/// plain-burn path, e.g. to measure the kernel against it (`bench generate --no-flash-attention`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether [`set_enabled`] left the kernel on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Keys per staged tile for head dimension `d`: K and V tiles of `tk * d` f32 each fit in
/// [`TILE_BYTES`]; a power of two, at most 32.
pub fn keys_per_tile(d: usize) -> usize {
    let fit = (TILE_BYTES / (2 * 4 * d.max(1))).clamp(1, 32);
    1 << fit.ilog2()
}

/// One instantiation of the template: head dimension and tile size decide the text.
struct FlashAttention {
    d: usize,
    tk: usize,
}

impl FlashAttention {
    /// One statement per vec4 of the head dimension (`{i}` = its index), joined as lines.
    fn unrolled(&self, indent: &str, statement: impl Fn(usize) -> String) -> String {
        (0..self.d / 4).map(|i| format!("{indent}{}", statement(i))).collect::<Vec<_>>().join("\n")
    }
}

impl KernelSource for FlashAttention {
    fn source(&self) -> SourceTemplate {
        let d4 = self.d / 4;
        SourceTemplate::new(SOURCE)
            .register("d4", d4.to_string())
            .register("tk", self.tk.to_string())
            .register("wg", WORKGROUP.to_string())
            .register("tile4", (self.tk * d4).to_string())
            .register("init", self.unrolled("    ", |i| format!("qr[{i}] = load_q(q_base + {c}u * qs.w, qs.w) * scale; acc[{i}] = vec4<f32>(0.0);", c = 4 * i)))
            .register("dot", self.unrolled("                ", |i| format!("dv += qr[{i}] * ks[jb + {i}u];")))
            .register("rescale", self.unrolled("            ", |i| format!("acc[{i}] *= corr;")))
            .register("accum", self.unrolled("                ", |i| format!("acc[{i}] += w * vs[jb + {i}u];")))
            .register("write", self.unrolled("        ", |i| {
                let c = 4 * i;
                format!("let o{i} = acc[{i}] * inv; out[o_base + {c}u * os.w] = o{i}.x; out[o_base + {c1}u * os.w] = o{i}.y; out[o_base + {c2}u * os.w] = o{i}.z; out[o_base + {c3}u * os.w] = o{i}.w;", c1 = c + 1, c2 = c + 2, c3 = c + 3)
            }))
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.d, self.tk, WORKGROUP))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

fn u32_of(x: usize, what: &str) -> Option<u32> {
    let v = u32::try_from(x).ok();
    if v.is_none() {
        log_fallback(what);
    }
    v
}

fn log_fallback(what: &str) {
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("flash attention: {what} does not fit in u32 indices; using the plain path");
    #[cfg(target_arch = "wasm32")]
    let _ = what;
}

/// Whether `t` is an f32 tensor of the cubecl backend without autodiff: the kernel's domain.
fn cube_f32(t: &Tensor<4>) -> Option<CubeTensor> {
    let c = t.clone().try_into_primitive::<Cube>().ok()?;
    (c.dtype == DType::F32).then_some(c)
}

/// `softmax(q k^T * scale) v` with the WGSL kernel, or `None` when the inputs are outside its
/// domain (not on a wgpu device, autodiff-tracked, not f32, head dim not a multiple of 4 or
/// above [`MAX_HEAD_DIM`], `v`'s width differing from `q`'s, or the kernel switched off); the caller
/// then uses the plain path. Inputs may be strided views; nothing is copied.
///
/// # Shapes
/// - `q`: `[batch, heads, queries, d]`, `k`, `v`: `[batch, heads, keys, d]`
/// - output: `[batch, heads, queries, d]` (a view of `[batch, queries, heads, d]` memory, so
///   the usual `swap_dims(1, 2).reshape([batch, queries, heads * d])` is free)
pub fn try_flash_attention(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, scale: f64) -> Option<Tensor<4>> {
    if !enabled() {
        return None;
    }
    let [b, h, n, d] = q.dims();
    let [kb, kh, m, kd] = k.dims();
    if v.dims() != [kb, kh, m, kd] || kb != b || kh != h || kd != d || d == 0 || d % 4 != 0 || d > MAX_HEAD_DIM || n == 0 || m == 0 {
        return None;
    }
    let (qc, kc, vc) = (untile(cube_f32(q)?), untile(cube_f32(k)?), untile(cube_f32(v)?));
    let client = qc.client.clone();
    let device = qc.device.clone();

    // Output memory [b, n, h, d], contiguous.
    let out_len = b * n * h * d;
    let out_handle = client.empty(out_len * 4);
    let out = CubeTensor::new_contiguous(client.clone(), device, Shape::new([b, n, h, d]), out_handle, DType::F32);

    let strides = |t: &CubeTensor| -> Option<[u32; 4]> {
        let s = t.meta.strides();
        Some([u32_of(s[0], "a stride")?, u32_of(s[1], "a stride")?, u32_of(s[2], "a stride")?, u32_of(s[3], "a stride")?])
    };
    let mut params: Vec<u32> = vec![u32_of(n, "the query count")?, u32_of(m, "the key count")?, h as u32, (scale as f32).to_bits()];
    params.extend(strides(&qc)?);
    params.extend(strides(&kc)?);
    params.extend(strides(&vc)?);
    // out viewed as [b, h, n, d]: strides of [b, n, h, d] memory.
    params.extend([u32_of(n * h * d, "the output size")?, d as u32, (h * d) as u32, 1]);
    // The info uniform is u64 words: two u32 each, the first in the low half (little endian,
    // as WGSL reads the buffer). A uniform the runtime owns: a buffer handle made here would
    // be freed (and its memory reused) before the lazily executed launch reads it.
    let words: Vec<u64> = params.chunks(2).map(|w| w[0] as u64 | (w[1] as u64) << 32).collect();

    let groups_x = u32_of(n.div_ceil(WORKGROUP as usize), "the workgroup count")?;
    let groups_y = u32_of(b * h, "batch x heads")?;
    let kernel = FlashAttention { d, tk: keys_per_tile(d) };
    client.launch(
        Box::new(SourceKernel::new(kernel, CubeDim::new_1d(WORKGROUP))),
        CubeCount::Static(groups_x, groups_y, 1),
        KernelArguments::new().with_buffers(vec![
            qc.handle.clone().binding(),
            kc.handle.clone().binding(),
            vc.handle.clone().binding(),
            out.handle.clone().binding(),
        ])
        .with_info(MetadataBindingInfo::custom(words)),
    );
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    Some(Tensor::<4>::from_primitive::<Cube>(out).swap_dims(1, 2))
}
