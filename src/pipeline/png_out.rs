//! PNG output with AUTOMATIC1111's `parameters` text chunk (the format A1111, ComfyUI and
//! civitai read back): `prompt\nNegative prompt: ...\nSteps: N, Sampler: S, CFG scale: G,
//! Seed: S, Size: WxH, Model: M, Version: pseudoword X`. Written as `tEXt` when the text is
//! Latin-1 and as `iTXt` otherwise, as PIL's `PngInfo.add_text` does.

use std::io::Write;

use crate::schedulers::SchedulerKind;

/// Generation parameters as A1111 writes them.
#[derive(Clone, Debug)]
pub struct A1111Parameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    /// A1111 sampler name (`Euler a`, `DPM++ 2M Karras`, `DDIM`, ...).
    pub sampler: String,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model: String,
    /// Extra `key: value` pairs appended (e.g. textual-inversion hashes, suppression).
    pub extra: Vec<(String, String)>,
}

impl A1111Parameters {
    /// The same parameters without the extra keys: the unsuppressed branch of a SuppressEOT run
    /// (an edit's reconstruction) is a plain image.
    pub fn plain(&self) -> Self {
        Self { extra: vec![], ..self.clone() }
    }

    /// The `parameters` chunk text.
    pub fn to_text(&self) -> String {
        let mut s = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            s.push_str("\nNegative prompt: ");
            s.push_str(&self.negative_prompt);
        }
        s.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps, self.sampler, self.cfg_scale, self.seed, self.width, self.height, self.model
        ));
        for (k, v) in &self.extra {
            s.push_str(&format!(", {k}: {v}"));
        }
        s.push_str(&format!(", Version: pseudoword {}", env!("CARGO_PKG_VERSION")));
        s
    }
}

/// Converts `[H, W, 3]` values in [0, 1] to RGB8 like diffusers' `numpy_to_pil`
/// (`(x * 255).round()`).
pub fn to_rgb8(image: &[f32]) -> Vec<u8> {
    image.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

/// Encodes an RGB8 image as PNG with the `parameters` chunk.
pub fn encode_png(rgb: &[u8], width: usize, height: usize, parameters: &str, out: impl Write) -> Result<(), png::EncodingError> {
    let mut enc = png::Encoder::new(out, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    if parameters.chars().all(|c| (c as u32) < 256) {
        enc.add_text_chunk("parameters".into(), parameters.into())?;
    } else {
        enc.add_itxt_chunk("parameters".into(), parameters.into())?;
    }
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    w.finish()
}

/// Reads the `parameters` text back from PNG bytes (tEXt, zTXt or iTXt).
pub fn read_parameters(bytes: &[u8]) -> Option<String> {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = dec.read_info().ok()?;
    let info = reader.info();
    if let Some(t) = info.uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters") {
        return Some(t.text.clone());
    }
    if let Some(t) = info.compressed_latin1_text.iter().find(|t| t.keyword == "parameters") {
        return t.get_text().ok();
    }
    info.utf8_text.iter().find(|t| t.keyword == "parameters").and_then(|t| t.get_text().ok())
}

/// A1111's sampler names.
pub fn a1111_sampler(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Ddim => "DDIM",
        SchedulerKind::Pndm => "PLMS",
        SchedulerKind::Euler => "Euler",
        SchedulerKind::EulerAncestral => "Euler a",
        SchedulerKind::DpmSolverMultistep { karras: false } => "DPM++ 2M",
        SchedulerKind::DpmSolverMultistep { karras: true } => "DPM++ 2M Karras",
        SchedulerKind::Lms => "LMS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(prompt: &str) -> A1111Parameters {
        A1111Parameters {
            prompt: prompt.into(),
            negative_prompt: "blurry".into(),
            steps: 20,
            sampler: "DPM++ 2M Karras".into(),
            cfg_scale: 7.5,
            seed: 42,
            width: 16,
            height: 8,
            model: "tiny-sd1".into(),
            extra: vec![],
        }
    }

    #[test]
    fn parameters_roundtrip_latin1_and_unicode() {
        for prompt in ["a photo of a <chelsea>", "東京タワーの夜景 🐱"] {
            let p = params(prompt);
            let mut buf = Vec::new();
            encode_png(&vec![128u8; 16 * 8 * 3], 16, 8, &p.to_text(), &mut buf).unwrap();
            let text = read_parameters(&buf).unwrap();
            assert_eq!(text, p.to_text());
            assert!(text.starts_with(prompt));
            assert!(text.contains("\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 16x8, Model: tiny-sd1"));
        }
    }

    #[test]
    fn rgb8_rounds_like_diffusers() {
        assert_eq!(to_rgb8(&[0.0, 1.0, 0.5, 0.499, -1.0, 2.0]), vec![0, 255, 128, 127, 0, 255]);
    }
}
