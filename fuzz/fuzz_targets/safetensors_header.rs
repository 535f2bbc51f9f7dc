//! Fuzzes the streamed safetensors reader of `src/weights/`: `SafetensorsHeader::read` (the
//! `u64` length + JSON header, validated against the file length and dtype x shape sizes), then
//! `read_tensor_f32` on every tensor it lists, and `read_safetensors_embedding` on the same bytes.
//!
//! Contract: `Ok` or a typed `WeightsError`/`EmbeddingError` naming the file, never a panic;
//! every tensor an `Ok` header lists lies inside the file with `len = numel x dtype size`; no
//! allocation beyond what the file holds (capped at 512 MiB by `pseudoword_fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pseudoword::embedding_files::read_safetensors_embedding;
use pseudoword::weights::{SafetensorsHeader, read_tensor_f32};
use pseudoword_fuzz::{Mem, check_embedding, check_err, now};

const FILE: &str = "fuzz.safetensors";

fuzz_target!(|data: &[u8]| {
    let src = Mem { name: FILE, bytes: data };
    match now(SafetensorsHeader::read(&src)) {
        Err(e) => check_err(&e, FILE),
        Ok(h) => {
            for t in h.tensors.values() {
                assert!(t.start.checked_add(t.len).is_some_and(|end| end <= data.len() as u64), "{t:?} outside the file");
                let Some(dtype) = t.dtype else { continue };
                let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).expect("shape product overflows");
                assert_eq!(Some(t.len), numel.checked_mul(dtype.size() as u64), "{t:?}: size vs shape");
                match now(read_tensor_f32(&src, t)) {
                    Ok(v) => assert_eq!(v.len() as u64, numel, "{t:?}: values read"),
                    Err(e) => panic!("tensor {t:?} of a valid header unreadable: {e}"),
                }
            }
        }
    }
    match now(read_safetensors_embedding(&src, None, "fuzz")) {
        Ok(e) => check_embedding(&e),
        Err(e) => check_err(&e, FILE),
    }
});
