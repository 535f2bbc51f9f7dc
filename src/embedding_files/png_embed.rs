//! AUTOMATIC1111's PNG embeddings: a preview PNG with a `sd-ti-embedding` text chunk holding
//! base64 of the embedding as JSON (A1111 `modules/textual_inversion/image_embedding.py`:
//! `embedding_to_b64` = `base64.b64encode(json.dumps(data, cls=EmbeddingEncoder).encode())`,
//! where `EmbeddingEncoder` writes each tensor as `{"TORCHTENSOR": tensor.tolist()}`; the
//! loader `embedding_from_b64` reverses it, then uses `data["name"]` as the embedding's name).
//! PIL's `PngInfo.add_text` stores it as a `tEXt` chunk; `zTXt` and `iTXt` are read as well.
//!
//! Not read: A1111's fallback of hiding the same data in the preview's pixels
//! (`insert_image_data_embed`, used when the chunk was stripped) - such files give a clear error.

use std::io::Cursor;

use base64::Engine;
use serde::Serialize;

use super::{A1111Meta, TextualInversion};

/// The text chunk keyword A1111 uses.
pub const CHUNK_KEYWORD: &str = "sd-ti-embedding";
/// Largest decoded text or image buffer the reader allows (bytes).
const LIMIT: usize = 64 << 20;

/// The embedding data A1111's PNG chunk carries, before token rules are applied.
pub struct PngEmbedding {
    pub vectors: Vec<f32>,
    pub n: usize,
    pub dim: usize,
    pub meta: A1111Meta,
}

/// Why a PNG embedding was not read.
pub enum PngError {
    /// The PNG is fine but has no `sd-ti-embedding` chunk.
    NoChunk,
    Malformed(String),
}

/// Finds the `sd-ti-embedding` text in PNG bytes (tEXt, zTXt or iTXt, before or after the image data).
pub fn find_chunk_text(bytes: &[u8]) -> Result<String, PngError> {
    let bad = |e: png::DecodingError| PngError::Malformed(format!("not a readable PNG ({e})"));
    let mut dec = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: LIMIT });
    dec.set_ignore_text_chunk(false);
    let mut reader = dec.read_info().map_err(bad)?;
    if let Some(t) = text_in(reader.info())? {
        return Ok(t);
    }
    // Chunks after the image data are only seen once it has been read through.
    reader.finish().map_err(bad)?;
    text_in(reader.info())?.ok_or(PngError::NoChunk)
}

fn text_in(info: &png::Info<'_>) -> Result<Option<String>, PngError> {
    let inflate = |e: png::DecodingError| PngError::Malformed(format!("the `{CHUNK_KEYWORD}` chunk cannot be decompressed ({e})"));
    if let Some(t) = info.uncompressed_latin1_text.iter().find(|t| t.keyword == CHUNK_KEYWORD) {
        return Ok(Some(t.text.clone()));
    }
    if let Some(t) = info.compressed_latin1_text.iter().find(|t| t.keyword == CHUNK_KEYWORD) {
        let mut t = t.clone();
        t.decompress_text_with_limit(LIMIT).map_err(inflate)?;
        return t.get_text().map(Some).map_err(inflate);
    }
    if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == CHUNK_KEYWORD) {
        let mut t = t.clone();
        t.decompress_text_with_limit(LIMIT).map_err(inflate)?;
        return t.get_text().map(Some).map_err(inflate);
    }
    Ok(None)
}

/// Decodes the chunk text: base64 -> JSON -> vectors and A1111 fields.
pub fn parse_chunk_text(text: &str) -> Result<PngEmbedding, String> {
    let cleaned: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let json = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| format!("the `{CHUNK_KEYWORD}` chunk is not base64 ({e})"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| format!("the `{CHUNK_KEYWORD}` chunk is not A1111 embedding JSON ({e})"))?;
    let obj = v.as_object().ok_or("the embedding JSON is not an object")?;
    let params = obj
        .get("string_to_param")
        .and_then(|p| p.as_object())
        .ok_or("the embedding JSON has no `string_to_param` object (only A1111 textual-inversion PNGs are supported)")?;
    if params.len() != 1 {
        return Err(format!("`string_to_param` has {} entries; an A1111 embedding has exactly one", params.len()));
    }
    let (_, tensor) = params.iter().next().expect("one entry");
    let rows =
        tensor.get("TORCHTENSOR").and_then(|t| t.as_array()).ok_or("`string_to_param` does not hold a {\"TORCHTENSOR\": [...]} tensor")?;
    let number = |x: &serde_json::Value| x.as_f64().map(|f| f as f32).ok_or("the tensor holds something that is not a number");
    let (vectors, n, dim) = if rows.iter().all(|r| r.is_number()) {
        let v: Vec<f32> = rows.iter().map(number).collect::<Result<_, _>>()?;
        let d = v.len();
        (v, 1, d)
    } else {
        let dim = rows.first().and_then(|r| r.as_array()).map_or(0, |r| r.len());
        let mut v = Vec::new();
        for r in rows {
            let r = r.as_array().ok_or("the tensor is neither [dim] nor [n, dim]")?;
            if r.len() != dim {
                return Err(format!("the tensor's rows have different lengths ({} and {dim})", r.len()));
            }
            for x in r {
                v.push(number(x)?);
            }
        }
        (v, rows.len(), dim)
    };
    let meta = A1111Meta {
        name: obj.get("name").and_then(|x| x.as_str()).map(str::to_string),
        step: obj.get("step").and_then(|x| x.as_i64()),
        sd_checkpoint: obj.get("sd_checkpoint").and_then(|x| x.as_str()).map(str::to_string),
        sd_checkpoint_name: obj.get("sd_checkpoint_name").and_then(|x| x.as_str()).map(str::to_string),
    };
    Ok(PngEmbedding { vectors, n, dim, meta })
}

#[derive(Serialize)]
struct Json<'a> {
    string_to_token: Star<i64>,
    string_to_param: Star<TorchTensor>,
    name: &'a str,
    step: Option<i64>,
    sd_checkpoint: Option<&'a str>,
    sd_checkpoint_name: Option<&'a str>,
}

#[derive(Serialize)]
struct Star<T> {
    #[serde(rename = "*")]
    star: T,
}

#[derive(Serialize)]
#[allow(non_snake_case)]
struct TorchTensor {
    TORCHTENSOR: Vec<Vec<f64>>,
}

/// The chunk text A1111 would write for this embedding: base64 of
/// `{"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": [[...]]}}, "name": ..,
/// "step": .., "sd_checkpoint": .., "sd_checkpoint_name": ..}` in Python `json.dumps` style.
pub fn chunk_text(emb: &TextualInversion, meta: &A1111Meta) -> String {
    let rows = emb.vectors.chunks(emb.dim.max(1)).map(|r| r.iter().map(|&x| x as f64).collect()).collect();
    let data = Json {
        string_to_token: Star { star: 265 },
        string_to_param: Star { star: TorchTensor { TORCHTENSOR: rows } },
        name: meta.name.as_deref().unwrap_or(&emb.token),
        step: meta.step,
        sd_checkpoint: meta.sd_checkpoint.as_deref(),
        sd_checkpoint_name: meta.sd_checkpoint_name.as_deref(),
    };
    let mut json = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut json, PyFormatter);
    data.serialize(&mut ser).expect("serializing to memory");
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// `json.dumps` formatting: `", "` and `": "` separators, floats as Python's `repr`.
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        w.write_all(py_float_repr(v).as_bytes())
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for 1e-4 <= |v| < 1e16,
/// else `d.ddde-05` / `de+16`.
pub fn py_float_repr(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let s = format!("{v:e}");
    let (mant, exp) = s.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let sign = if mant.starts_with('-') { "-" } else { "" };
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() == 1 { digits.clone() } else { format!("{}.{}", &digits[..1], &digits[1..]) };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// A small preview image of the vectors: one square tile per vector (at least 64 px), each value
/// a cell coloured blue (negative) - white - red (positive), scaled by the largest magnitude. RGB8.
pub fn preview_image(emb: &TextualInversion) -> (Vec<u8>, u32, u32) {
    let n = emb.n.clamp(1, 64);
    let side = (emb.dim.max(1) as f64).sqrt().ceil() as usize;
    let cell = (64 / side).max(4);
    let (w, h) = (n * side * cell, side * cell);
    let max = emb.vectors.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let mut img = vec![128u8; w * h * 3];
    for (k, row) in emb.vectors.chunks(emb.dim.max(1)).take(n).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            let x = (v / max).clamp(-1.0, 1.0);
            let rgb = [1.0 - (-x).max(0.0), 1.0 - x.abs(), 1.0 - x.max(0.0)].map(|c| (c * 255.0).round() as u8);
            let (cx, cy) = (k * side + i % side, i / side);
            for dy in 0..cell {
                for dx in 0..cell {
                    let p = ((cy * cell + dy) * w + cx * cell + dx) * 3;
                    img[p..p + 3].copy_from_slice(&rgb);
                }
            }
        }
    }
    (img, w as u32, h as u32)
}

/// A preview PNG carrying the embedding in its `sd-ti-embedding` chunk.
pub fn write_png(emb: &TextualInversion, meta: &A1111Meta) -> Vec<u8> {
    let (rgb, w, h) = preview_image(emb);
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk(CHUNK_KEYWORD.into(), chunk_text(emb, meta)).expect("base64 is Latin-1");
    let title = format!("<{}>", meta.name.as_deref().unwrap_or(&emb.token));
    if title.chars().all(|c| (c as u32) < 256) {
        enc.add_text_chunk("Title".into(), title).expect("Latin-1 text");
    }
    let mut wr = enc.write_header().expect("PNG header to memory");
    wr.write_image_data(&rgb).expect("PNG data to memory");
    wr.finish().expect("PNG to memory");
    out
}

/// Adds (or replaces) the `sd-ti-embedding` chunk of an existing PNG (e.g. an image generated with
/// the embedding), right after its IHDR; every other chunk is kept byte for byte.
pub fn embed_in_png(png_bytes: &[u8], emb: &TextualInversion, meta: &A1111Meta) -> Result<Vec<u8>, String> {
    const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !png_bytes.starts_with(SIG) {
        return Err("not a PNG file".into());
    }
    let mut out = SIG.to_vec();
    let mut pos = SIG.len();
    let mut first = true;
    while pos < png_bytes.len() {
        let head = png_bytes.get(pos..pos + 8).ok_or("truncated PNG chunk header")?;
        let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let kind = &head[4..8];
        let end = pos.checked_add(12 + len).filter(|&e| e <= png_bytes.len()).ok_or("truncated PNG chunk")?;
        let data = &png_bytes[pos + 8..pos + 8 + len];
        let ours = matches!(kind, b"tEXt" | b"zTXt" | b"iTXt") && data.split(|&b| b == 0).next() == Some(CHUNK_KEYWORD.as_bytes());
        if first && kind != b"IHDR" {
            return Err("PNG does not start with IHDR".into());
        }
        if !ours {
            out.extend_from_slice(&png_bytes[pos..end]);
        }
        if first {
            let mut body = CHUNK_KEYWORD.as_bytes().to_vec();
            body.push(0);
            body.extend(chunk_text(emb, meta).as_bytes());
            out.extend((body.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(b"tEXt");
            crc.update(&body);
            out.extend(b"tEXt");
            out.extend(&body);
            out.extend(crc.sum().to_be_bytes());
            first = false;
        }
        pos = end;
    }
    if first {
        return Err("truncated PNG: no IHDR chunk after the signature".into());
    }
    Ok(out)
}
