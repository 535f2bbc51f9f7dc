//! SuppressEOT's token masks from the original branch's aggregated cross-attention maps (the
//! reference's `get_mask` step): for each prompt token `i` in `1..n-1`,
//! `m = 255 * A[:, :, i] / max`, bilinear resize to 256x256 (`align_corners=False`), threshold
//! `0.85` for negative-target tokens and `0.95` otherwise (`m[m >= max*thr] = 255`, then
//! `m[m < max*thr] = 0` with the max taken again), bilinear resize back; `M_i = {j : m[j] > 0}`.
//! Host-side, in f64.

use super::SuppressTokens;

/// Side of the intermediate square the reference thresholds at.
pub const MASK_WORK_SIZE: usize = 256;
/// Threshold for negative-target tokens.
pub const ERASE_THRESHOLD: f64 = 0.85;
/// Threshold for the other prompt tokens.
pub const RETAIN_THRESHOLD: f64 = 0.95;

/// `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` (no antialias) of a
/// `[h, w]` row-major image to `[oh, ow]`.
pub fn resize_bilinear(src: &[f64], [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Vec<f64> {
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f64)> {
        let scale = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|o| {
                let s = (scale * (o as f64 + 0.5) - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, s - i0 as f64)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, ly) in &ty {
        for &(x0, x1, lx) in &tx {
            let at = |y: usize, x: usize| src[y * w + x];
            let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
            let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
    out
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Float masks `[n-2, h, w]` (row-major; before the `> 0` test) for the prompt tokens `1..n-1`.
///
/// - `cross`: one batch element's aggregated cross maps `[h, w, keys]` row-major.
pub fn token_masks(cross: &[f32], [h, w]: [usize; 2], keys: usize, tokens: &SuppressTokens) -> Vec<f64> {
    assert_eq!(cross.len(), h * w * keys, "cross maps must be [h, w, keys]");
    let big = [MASK_WORK_SIZE, MASK_WORK_SIZE];
    let mut out = Vec::new();
    for i in tokens.word_positions() {
        let a: Vec<f64> = (0..h * w).map(|p| cross[p * keys + i] as f64).collect();
        let amax = max_of(&a);
        let m: Vec<f64> = a.iter().map(|&v| 255.0 * v / amax).collect();
        let mut m = resize_bilinear(&m, [h, w], big);
        let thr = if tokens.target.contains(&i) { ERASE_THRESHOLD } else { RETAIN_THRESHOLD };
        let cut = max_of(&m) * thr;
        m.iter_mut().filter(|v| **v >= cut).for_each(|v| *v = 255.0);
        let cut = max_of(&m) * thr;
        m.iter_mut().filter(|v| **v < cut).for_each(|v| *v = 0.0);
        out.extend(resize_bilinear(&m, big, [h, w]));
    }
    out
}
