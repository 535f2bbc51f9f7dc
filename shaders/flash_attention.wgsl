// Memory-efficient attention forward, flash-attention style (online softmax):
//   out[b, h, i, :] = softmax_j(scale * q[b, h, i, :] . k[b, h, j, :]) @ v[b, h, :, :]
// The [queries, keys] probabilities never exist: every invocation owns one query row, keeps
// its running maximum `m`, normaliser `l` and weighted sum `acc` in registers, and walks the
// keys in tiles of TK rows that the workgroup stages in workgroup memory.
//
// Plain-burn reference: `models::attention::sdpa_reference` (chunked softmax(q k^T) v);
// Rust launcher (which fills the templates) and tests: `src/kernels/flash_attention.rs`,
// `tests/flash_attention.rs`.
//
// Template values: D4 = head dimension / 4 (rows are vec4s), TK = keys per tile (2 * TK * D
// * 4 bytes of workgroup memory, at most 16 KiB: WebGPU's default limit), WG = queries per
// workgroup; the init / dot / rescale / accum / write placeholders are the per-vec4
// statements over the head dimension, unrolled by the launcher. Unrolled, the rows
// live in registers, and the only loops left are over keys: Mesa's llvmpipe/lavapipe (the
// software drivers CI runs on) stop every loop of an invocation after 65535 iterations in
// total, which a loop over the head dimension per key would exceed at 512x512.
//
// Dispatch: (ceil(N / WG), B * H, 1). Strides are in elements, so q/k/v can be views of the
// projection outputs ([b, n, h, d] memory seen as [b, h, n, d]) and the output is written
// straight into [b, n, h, d] memory.

const D4: u32 = {{ d4 }}u;
const TK: u32 = {{ tk }}u;
const WG: u32 = {{ wg }}u;

// All read_write: cubecl suballocates tensors from shared buffers, and one wgpu buffer bound
// read-only and read-write in the same dispatch is a usage conflict.
@group(0) @binding(0) var<storage, read_write> q: array<f32>;
@group(0) @binding(1) var<storage, read_write> k: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// The launch's info uniform (cubecl binds it after the buffers), 20 u32 in 5 vec4s:
// [N, M, H, scale (f32 bits)], then the element strides (b, h, seq, d) of q, k, v and out.
// A uniform, so every value read from it is uniform (the key loop has barriers in it).
@group(0) @binding(4) var<uniform> info: array<vec4<u32>, 5>;

var<workgroup> ks: array<vec4<f32>, {{ tile4 }}>;
var<workgroup> vs: array<vec4<f32>, {{ tile4 }}>;

fn load4(buf_k: bool, base: u32, stride: u32) -> vec4<f32> {
    if buf_k {
        return vec4<f32>(k[base], k[base + stride], k[base + 2u * stride], k[base + 3u * stride]);
    }
    return vec4<f32>(v[base], v[base + stride], v[base + 2u * stride], v[base + 3u * stride]);
}

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n_q = info[0].x;
    let n_k = info[0].y;
    let heads = info[0].z;
    let scale = bitcast<f32>(info[0].w);
    let qs = info[1];
    let kst = info[2];
    let vst = info[3];
    let os = info[4];
    let bh = wid.y;
    let b = bh / heads;
    let h = bh % heads;
    let row = wid.x * WG + lid;
    let valid = row < n_q;

    // A row past the end reads row 0 (always there) and writes nothing.
    let q_base = b * qs.x + h * qs.y + select(0u, row, valid) * qs.z;
    let k_base = b * kst.x + h * kst.y;
    let v_base = b * vst.x + h * vst.y;

    var qr: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
{{ init }}
    // A finite start keeps exp(m - m_new) at 0 instead of exp(-inf + inf) = NaN.
    var m = -3.0e38;
    var l = 0.0;
    var s: array<f32, TK>;

    for (var t0 = 0u; t0 < n_k; t0 += TK) {
        let cnt = min(TK, n_k - t0);
        // Stage the tile: keys t0..t0+cnt, the row as D4 vec4s.
        for (var i = lid; i < TK * D4; i += WG) {
            let j = i / D4;
            let c = (i % D4) * 4u;
            if j < cnt {
                ks[i] = load4(true, k_base + (t0 + j) * kst.z + c * kst.w, kst.w);
                vs[i] = load4(false, v_base + (t0 + j) * vst.z + c * vst.w, vst.w);
            }
        }
        workgroupBarrier();
        if valid {
            var m_new = m;
            for (var j = 0u; j < cnt; j++) {
                let jb = j * D4;
                var dv = vec4<f32>(0.0);
{{ dot }}
                let sc = dv.x + dv.y + dv.z + dv.w;
                s[j] = sc;
                m_new = max(m_new, sc);
            }
            let corr = exp(m - m_new);
            l *= corr;
{{ rescale }}
            for (var j = 0u; j < cnt; j++) {
                let jb = j * D4;
                let w = exp(s[j] - m_new);
                l += w;
{{ accum }}
            }
            m = m_new;
        }
        workgroupBarrier();
    }

    if valid {
        let o_base = b * os.x + h * os.y + row * os.z;
        let inv = 1.0 / l;
{{ write }}
    }
}

fn load_q(base: u32, stride: u32) -> vec4<f32> {
    return vec4<f32>(q[base], q[base + stride], q[base + 2u * stride], q[base + 3u * stride]);
}
