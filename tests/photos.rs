//! Training-photo preparation: the fixture photos against the exact 256x256 crops diffusers'
//! script trained on (PIL decode + centre crop + bicubic resize), EXIF orientation, unusual
//! formats (CMYK JPEG, 16-bit grey PNG, alpha PNG), a 30-megapixel photo, and files that must be
//! refused with a clear message.

use std::io::Cursor;
use std::path::PathBuf;

use pseudoword::train::{PhotoError, PreparedPhoto, prepare_photo};

fn photos() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/photos")
}

fn prep(name: &str, res: u32) -> Result<PreparedPhoto, PhotoError> {
    let bytes = std::fs::read(photos().join(name)).unwrap();
    prepare_photo(&bytes, name, res)
}

/// (mean, max) absolute difference in 8-bit levels.
fn diff(a: &image::RgbImage, b: &image::RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    (d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64, *d.iter().max().unwrap())
}

#[test]
fn fixture_photos_match_the_training_crops() {
    // JPEG decoders and bicubic kernels differ slightly between libraries (fixtures README), so
    // the check is statistical: a wrong crop, orientation or channel order is off by tens of levels.
    for k in 1..=5 {
        let name = std::fs::read_dir(photos())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().into_string().unwrap()))
            .find(|n| n.starts_with(&format!("chelsea_{k}_")))
            .unwrap();
        let got = prep(&name, 256).unwrap();
        let want = image::open(photos().join(format!("train_{k}_256.png"))).unwrap().to_rgb8();
        let (mean, max) = diff(&got.image, &want);
        eprintln!("{name}: mean abs diff {mean:.3} levels, max {max}");
        assert!(mean < 0.5, "{name}: mean abs diff {mean}");
        assert!(max <= 4, "{name}: max abs diff {max}");
    }
}

#[test]
fn exif_orientation_is_applied() {
    let upright = prep("chelsea_4_wide.jpg", 128).unwrap();
    let rotated = prep("odd/exif_orientation_6.jpg", 128).unwrap();
    assert_eq!(rotated.original_size, (512, 341), "EXIF 6: stored 341x512, displayed 512x341");
    let (mean, _) = diff(&upright.image, &rotated.image);
    eprintln!("EXIF-rotated vs upright: mean abs diff {mean:.3}");
    assert!(mean < 3.0, "{mean}");
}

#[test]
fn unusual_formats_are_converted() {
    let reference = prep("chelsea_4_wide.jpg", 128).unwrap();
    let cmyk = prep("odd/cmyk.jpg", 128).unwrap();
    let (mean, _) = diff(&reference.image, &cmyk.image);
    eprintln!("CMYK JPEG vs RGB: mean abs diff {mean:.3}");
    assert!(mean < 4.0, "CMYK JPEG colours: {mean}");

    let grey = prep("odd/gray16.png", 128).unwrap();
    assert!(grey.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]), "16-bit grey becomes grey RGB");
    // the grey PNG holds the red channel of the photo
    let red: Vec<i32> = reference.image.pixels().map(|p| p[0] as i32).collect();
    let g: Vec<i32> = grey.image.pixels().map(|p| p[0] as i32).collect();
    let mean = red.iter().zip(&g).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / red.len() as f64;
    assert!(mean < 3.0, "16-bit grey levels: {mean}");

    // alpha: the transparent left 100 columns (of 512; the centre crop starts at column 85)
    // become white
    let alpha = prep("odd/alpha.png", 336).unwrap();
    assert_eq!(alpha.image.get_pixel(0, 100).0, [255, 255, 255]);
    assert_ne!(alpha.image.get_pixel(300, 100).0, [255, 255, 255]);
    assert!(matches!(prep("odd/alpha.png", 341), Err(PhotoError::BadResolution(341))));
}

#[test]
fn bad_files_are_refused_with_a_message() {
    let e = prep("odd/not_an_image.jpg", 256).unwrap_err();
    assert!(matches!(e, PhotoError::NotAnImage { .. }), "{e:?}");
    assert!(e.to_string().contains("not_an_image.jpg") && e.to_string().contains("JPEG, PNG or WebP"), "{e}");

    let e = prep("odd/one_pixel.png", 256).unwrap_err();
    assert!(matches!(e, PhotoError::TooSmall { width: 1, height: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("1x1"), "{e}");

    // a truncated JPEG
    let bytes = std::fs::read(photos().join("chelsea_1_center.jpg")).unwrap();
    let e = prepare_photo(&bytes[..bytes.len() / 3], "cut.jpg", 256);
    // decoders may fill the missing part (like browsers do) or refuse; never panic
    if let Err(e) = e {
        assert!(e.to_string().contains("cut.jpg"), "{e}");
    }
    assert!(prepare_photo(&[], "empty.png", 256).is_err());
}

#[test]
fn thirty_megapixel_photo_is_downscaled() {
    // 6720 x 4480 = 30.1 MP, a smooth gradient (compresses well, decodes fully)
    let (w, h) = (6720u32, 4480u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]));
    let mut jpeg = Vec::new();
    img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
    drop(img);
    let p = prepare_photo(&jpeg, "big.jpg", 512).unwrap();
    assert_eq!(p.original_size, (w, h));
    assert_eq!(p.image.dimensions(), (512, 512));
    // centre crop: columns 1120..5600 of the gradient -> red from ~42 to ~212
    let left = p.image.get_pixel(0, 256)[0] as i32;
    let right = p.image.get_pixel(511, 256)[0] as i32;
    assert!((left - 42).abs() <= 3 && (right - 212).abs() <= 3, "{left} {right}");
}
