//! Why a photo (`crate::photos`) cannot be used.

/// Why a photo cannot be used. Messages name the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    #[error("`{name}` is not an image this app can read ({reason}); use a JPEG, PNG or WebP photo")]
    NotAnImage { name: String, reason: String },
    #[error("`{name}` is only {width}x{height} pixels; training needs photos at least {min}x{min} (ideally {resolution}x{resolution} or larger)")]
    TooSmall { name: String, width: u32, height: u32, min: u32, resolution: u32 },
    #[error("`{name}` is {width}x{height} pixels, larger than this app accepts ({max} per side); downscale it first")]
    TooLarge { name: String, width: u32, height: u32, max: u32 },
    #[error("no training photos were given; add 3-5 photos of the subject")]
    NoPhotos,
    #[error("the training resolution must be a positive multiple of 8 (got {0})")]
    BadResolution(u32),
}
