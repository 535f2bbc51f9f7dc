//! Fuzzes AUTOMATIC1111's embedding-in-PNG reader (`src/embedding_files/png_embed.rs`) through
//! `read_embedding` with a `.png` name: the PNG chunk walk (tEXt/zTXt/iTXt before or after the
//! image data) and the base64 JSON `string_to_param` decoding. Also `embed_in_png` on the bytes.
//! Besides the raw bytes, the input is put into a valid 1x1 PNG as the `sd-ti-embedding` text
//! (as is, and base64-encoded) so that mutations reach the base64 and JSON decoding past the
//! PNG CRCs.
//!
//! Contract: `Ok` (finite `n x dim` values, a token) or a typed `EmbeddingError` naming the file,
//! never a panic, no allocation beyond the 64 MiB decode limit (capped at 512 MiB), bounded time.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use pseudoword::embedding_files::{A1111Meta, PNG_CHUNK_KEYWORD, TextualInversion, embed_in_png, read_embedding};
use pseudoword_fuzz::{check_embedding, check_err};

const FILE: &str = "fuzz.png";

fn check(bytes: &[u8]) {
    match read_embedding(bytes, FILE, None) {
        Ok(e) => check_embedding(&e),
        Err(e) => check_err(&e, FILE),
    }
}

/// A valid 1x1 grey PNG whose `sd-ti-embedding` tEXt chunk holds `text` (bytes as Latin-1).
fn png_with_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 1, 1);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk(PNG_CHUNK_KEYWORD.into(), text.iter().map(|&b| b as char).collect()).expect("Latin-1");
    let mut w = enc.write_header().expect("in memory");
    w.write_image_data(&[0]).expect("in memory");
    w.finish().expect("in memory");
    out
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let emb = TextualInversion { token: "<t>".into(), vectors: vec![0.5; 4], n: 1, dim: 4 };
    match embed_in_png(data, FILE, &emb, &A1111Meta::default()) {
        Ok(png) => assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.windows(15).any(|w| w == PNG_CHUNK_KEYWORD.as_bytes())),
        Err(e) => check_err(&e, FILE),
    }
    if !data.starts_with(b"\x89PNG") {
        check(&png_with_text(data));
        check(&png_with_text(base64::engine::general_purpose::STANDARD.encode(data).as_bytes()));
    }
});
