//! Photo preparation (training photos, photos to edit), as diffusers' `TextualInversionDataset` does it (PIL): decode,
//! apply the EXIF orientation, centre-crop to a square, resize to the training resolution
//! (bicubic), optional horizontal flip, pixels `x / 127.5 - 1` in CHW order.
//!
//! Everything a user may drop on the page is handled or refused with a message saying what to
//! do: PNG (8/16-bit, grey, alpha: composited on white), JPEG (incl. CMYK), WebP; images far
//! larger than needed are decoded within a memory limit and cropped before resizing; tiny or
//! non-image files are refused.

use std::io::Cursor;

pub use crate::error::PhotoError;

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage, RgbaImage};

/// Smallest accepted shorter side in pixels: below that a photo carries no usable detail.
pub const MIN_PHOTO_SIDE: u32 = 64;
/// Largest accepted side in pixels (a 30-megapixel photo is about 6700 x 4500).
pub const MAX_PHOTO_SIDE: u32 = 16_384;
/// Decoder memory limit (bytes), enough for a 16-bit RGBA 30-megapixel image plus headroom.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;



/// A photo ready for the VAE: square RGB at the training resolution.
#[derive(Clone, Debug)]
pub struct PreparedPhoto {
    /// File name (for messages and the UI).
    pub name: String,
    /// Size of the decoded photo after EXIF orientation, before cropping.
    pub original_size: (u32, u32),
    /// `resolution x resolution` RGB, 8 bit.
    pub image: RgbImage,
}

impl PreparedPhoto {
    /// Pixels `x / 127.5 - 1` as `[3, R, R]` (CHW, row-major), optionally flipped horizontally.
    pub fn pixels(&self, flip: bool) -> Vec<f32> {
        let (w, h) = self.image.dimensions();
        let (w, h) = (w as usize, h as usize);
        let raw = self.image.as_raw();
        let mut out = vec![0f32; 3 * w * h];
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                for c in 0..3 {
                    out[c * w * h + y * w + x] = raw[(y * w + sx) * 3 + c] as f32 / 127.5 - 1.0;
                }
            }
        }
        out
    }
}

/// Decodes `bytes` (file `name`) and prepares it for training at `resolution`.
pub fn prepare_photo(bytes: &[u8], name: &str, resolution: u32) -> Result<PreparedPhoto, PhotoError> {
    if resolution == 0 || !resolution.is_multiple_of(8) {
        return Err(PhotoError::BadResolution(resolution));
    }
    let not_image = |reason: String| PhotoError::NotAnImage { name: name.to_string(), reason };
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| not_image(e.to_string()))?;
    if reader.format().is_none() {
        return Err(not_image("unrecognised file contents".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_PHOTO_SIDE);
    limits.max_image_height = Some(MAX_PHOTO_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| classify(e, name))?;
    let (w, h) = decoder.dimensions();
    if w.max(h) > MAX_PHOTO_SIDE {
        return Err(PhotoError::TooLarge { name: name.into(), width: w, height: h, max: MAX_PHOTO_SIDE });
    }
    // A missing or unreadable EXIF block means "as stored".
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| classify(e, name))?;
    img.apply_orientation(orientation);
    let (w, h) = (img.width(), img.height());
    if w.min(h) < MIN_PHOTO_SIDE {
        return Err(PhotoError::TooSmall { name: name.into(), width: w, height: h, min: MIN_PHOTO_SIDE, resolution });
    }
    let rgb = flatten_to_rgb8(img);
    // centre crop to the shorter side (PIL: `img[(h - crop) // 2 : (h + crop) // 2, ...]`)
    let side = w.min(h);
    let (x0, y0) = ((w - side) / 2, (h - side) / 2);
    let square = imageops::crop_imm(&rgb, x0, y0, side, side).to_image();
    let image = if side == resolution { square } else { imageops::resize(&square, resolution, resolution, FilterType::CatmullRom) };
    Ok(PreparedPhoto { name: name.into(), original_size: (w, h), image })
}

/// Any colour type -> 8-bit RGB; transparent pixels are composited on white (a cut-out subject
/// on a black background would teach the embedding a black background).
fn flatten_to_rgb8(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba: RgbaImage = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as f32 / 255.0;
        let blend = |c: u8| (c as f32 * a + 255.0 * (1.0 - a)).round() as u8;
        image::Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    })
}

fn classify(e: image::ImageError, name: &str) -> PhotoError {
    match e {
        image::ImageError::Limits(l) => PhotoError::NotAnImage {
            name: name.into(),
            reason: format!("it needs more memory to decode than allowed ({l}); downscale it first"),
        },
        other => PhotoError::NotAnImage { name: name.into(), reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn crops_centre_and_flips() {
        // 300x100: left third red, middle green, right blue -> the centre square is all green
        let img = RgbImage::from_fn(300, 100, |x, _| match x {
            0..100 => image::Rgb([255, 0, 0]),
            100..200 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let p = prepare_photo(&png(&img), "bars.png", 64).unwrap();
        assert_eq!(p.original_size, (300, 100));
        assert_eq!(p.image.dimensions(), (64, 64));
        assert!(p.image.pixels().all(|q| q.0 == [0, 255, 0]), "centre crop must keep the middle third");
        // flip mirrors columns
        let grad = RgbImage::from_fn(64, 64, |x, _| image::Rgb([x as u8 * 4, 0, 0]));
        let p = prepare_photo(&png(&grad), "grad.png", 64).unwrap();
        let (a, b) = (p.pixels(false), p.pixels(true));
        assert_eq!(a[0], -1.0);
        assert_eq!(b[0], a[63]);
        assert_eq!(b[63], a[0]);
        assert!((a[63] - (252.0 / 127.5 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn refuses_bad_resolution() {
        let img = RgbImage::new(64, 64);
        assert!(matches!(prepare_photo(&png(&img), "x.png", 100), Err(PhotoError::BadResolution(100))));
    }
}

/// `[1, 3, R, R]` pixels in [-1, 1] of a prepared photo (for the VAE encoder).
pub fn photo_tensor(photo: &PreparedPhoto, device: &burn::tensor::Device) -> burn::tensor::Tensor<4> {
    let (w, h) = photo.image.dimensions();
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(photo.pixels(false), [1, 3, h as usize, w as usize]), device)
}
