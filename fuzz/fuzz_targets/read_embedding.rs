//! Fuzzes the embedding-file entry point `read_embedding_with_meta` (format detection from the
//! content, then the safetensors, torch zip/legacy pickle or PNG reader) under each file name the
//! CLI and the browser pass: the first input byte picks `.safetensors`, `.bin`, `.pt`, `.png` or
//! no extension (which also sets whether a `--token` override is given).
//!
//! Contract: `Ok` (finite `n x dim` values, a non-empty token, the override when one is given) or a
//! typed `EmbeddingError` naming the file; never a panic, no allocation sized from a declared length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pseudoword::embedding_files::read_embedding_with_meta;
use pseudoword_fuzz::{check_embedding, check_err};

const NAMES: [&str; 5] = ["learned_embeds.safetensors", "learned_embeds.bin", "emb.pt", "emb.png", "emb"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let name = NAMES[sel as usize % NAMES.len()];
    let token = (sel & 0x80 != 0).then_some("<tok>");
    match read_embedding_with_meta(bytes, name, token) {
        Ok(l) => {
            check_embedding(&l.embedding);
            if let Some(t) = token {
                assert_eq!(l.embedding.token, t);
            }
        }
        Err(e) => check_err(&e, name),
    }
});
