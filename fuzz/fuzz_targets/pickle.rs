//! Fuzzes the restricted unpickler and the torch checkpoint readers of
//! `src/embedding_files/{pickle,torch_zip}.rs`: `pickle::unpickle` on the raw bytes,
//! `read_torch_object` and `read_embedding` with a `.pt` name (zip or legacy checkpoint), and the
//! bytes as `data.pkl` of a well-formed torch zip with float storages `0`..`3` (so mutations reach
//! the unpickler and the tensor gather instead of failing the zip CRC).
//!
//! Contract: `Ok` or a typed `PickleError`/`EmbeddingError` (naming the file), never a panic, no
//! allocation sized from a declared length (capped at 512 MiB), bounded time per input.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pseudoword::embedding_files::pickle::unpickle;
use pseudoword::embedding_files::torch_zip::write_zip;
use pseudoword::embedding_files::{read_embedding, read_torch_object};
use pseudoword_fuzz::{check_embedding, check_err};

const FILE: &str = "fuzz.pt";

/// Storages for the wrapped zip: `0` (64 f32), `1` (one f32), `2` (empty), `3` (odd length).
static STORAGE: LazyLock<Vec<u8>> = LazyLock::new(|| (0..64).flat_map(|i| (i as f32 / 64.0).to_le_bytes()).collect());

fuzz_target!(|data: &[u8]| {
    if let Ok((_, end)) = unpickle(data) {
        assert!(end <= data.len());
    }
    if let Err(e) = read_torch_object(data, FILE) {
        check_err(&e, FILE);
    }
    match read_embedding(data, FILE, None) {
        Ok(e) => check_embedding(&e),
        Err(e) => check_err(&e, FILE),
    }
    let s = &STORAGE[..];
    let zip = write_zip("archive", data, &[("0", s), ("1", &s[..4]), ("2", &[]), ("3", &s[..7])]);
    match read_embedding(&zip, FILE, None) {
        Ok(e) => check_embedding(&e),
        Err(e) => check_err(&e, FILE),
    }
});
