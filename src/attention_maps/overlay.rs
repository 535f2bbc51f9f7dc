//! Host-side drawing of heatmaps (prompt-to-prompt's `show_cross_attention`, with a colour map
//! instead of grey): a `[h, w]` map normalised by its maximum, upsampled bilinearly to the image
//! size (half-pixel centres, as `F.interpolate(..., mode="bilinear", align_corners=False)`),
//! coloured with the "jet" map and blended 50 % over the image; tiles side by side as a strip.

/// The "jet" colour of `v` in [0, 1] (matplotlib's piecewise-linear definition).
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let ch = |x: f32| ((1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [ch(3.0), ch(2.0), ch(1.0)]
}

/// Bilinear resize of a `[h, w]` map to `[out_h, out_w]` (align_corners=False, edges clamped).
pub fn resize_bilinear(map: &[f32], size: [usize; 2], out: [usize; 2]) -> Vec<f32> {
    let [h, w] = size;
    let [oh, ow] = out;
    assert_eq!(map.len(), h * w, "map length");
    let coord = |o: usize, n_in: usize, n_out: usize| {
        let x = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
        let i0 = (x.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, (x - i0 as f64) as f32)
    };
    let cols: Vec<_> = (0..ow).map(|x| coord(x, w, ow)).collect();
    let mut v = Vec::with_capacity(oh * ow);
    for y in 0..oh {
        let (y0, y1, fy) = coord(y, h, oh);
        for &(x0, x1, fx) in &cols {
            let top = map[y0 * w + x0] * (1.0 - fx) + map[y0 * w + x1] * fx;
            let bottom = map[y1 * w + x0] * (1.0 - fx) + map[y1 * w + x1] * fx;
            v.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    v
}

/// The heatmap of `map` (`[h, w]`, any non-negative scale: divided by its maximum) blended 50 %
/// over `image` (RGB8, `[height, width, 3]`). Returns RGB8 of the image's size.
pub fn overlay(image: &[u8], width: usize, height: usize, map: &[f32], size: [usize; 2]) -> Vec<u8> {
    assert_eq!(image.len(), width * height * 3, "image length");
    let up = resize_bilinear(map, size, [height, width]);
    let max = map.iter().copied().fold(0.0f32, f32::max);
    let scale = if max > 0.0 { 1.0 / max } else { 0.0 };
    let mut out = Vec::with_capacity(image.len());
    for (px, v) in image.chunks_exact(3).zip(up) {
        let c = jet(v * scale);
        for ch in 0..3 {
            out.push((px[ch] as u16 + c[ch] as u16).div_ceil(2) as u8);
        }
    }
    out
}

/// Tiles (RGB8, each `width x height`) side by side: `(rgb, strip_width)`.
pub fn strip(tiles: &[Vec<u8>], width: usize, height: usize) -> (Vec<u8>, usize) {
    let sw = width * tiles.len();
    let mut out = vec![0u8; sw * height * 3];
    for (i, t) in tiles.iter().enumerate() {
        for y in 0..height {
            let dst = (y * sw + i * width) * 3;
            out[dst..dst + width * 3].copy_from_slice(&t[y * width * 3..(y + 1) * width * 3]);
        }
    }
    (out, sw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_ends_and_middle() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(0.5), [128, 255, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
    }

    #[test]
    fn bilinear_matches_half_pixel_interpolation() {
        // 2x2 -> 4x4: pytorch gives [a, .75a+.25b, .25a+.75b, b] along each axis
        let up = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], [2, 2], [4, 4]);
        assert_eq!(&up[0..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(&up[12..16], &[2.0, 2.25, 2.75, 3.0]);
        // constant maps stay constant
        assert!(resize_bilinear(&[0.3; 6], [2, 3], [5, 7]).iter().all(|&v| (v - 0.3).abs() < 1e-7));
    }

    #[test]
    fn overlay_and_strip_sizes() {
        let img = vec![200u8; 4 * 2 * 3];
        let o = overlay(&img, 4, 2, &[0.0, 1.0], [1, 2]);
        assert_eq!(o.len(), img.len());
        // left edge is the map's 0 (dark blue) blended, right edge its max (dark red) blended
        assert_eq!(&o[0..3], &[100, 100, 164]);
        assert_eq!(&o[9..12], &[164, 100, 100]);
        let (s, w) = strip(&[o.clone(), img.clone()], 4, 2);
        assert_eq!((s.len(), w), (2 * img.len(), 8));
        assert_eq!(&s[12..15], &[200, 200, 200]);
    }
}
