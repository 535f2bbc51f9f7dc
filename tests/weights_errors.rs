//! Weight loading from diffusers folders: every bad-file case gives a typed error naming the
//! file, the key, expected and actual; prefix-less keys, buffers and F16/BF16 files load.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use common::*;
use pseudoword::error::{Error, WeightsError};
use pseudoword::native::load_prompt_encoder;
use safetensors::Dtype;

/// A temp copy of the tiny model whose text-encoder weights are `blobs`.
fn model_with(blobs: &[Blob]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("model");
    copy_dir(&tiny_sd1().join("tokenizer"), &root.join("tokenizer"));
    copy_dir(&tiny_sd1().join("text_encoder"), &root.join("text_encoder"));
    std::fs::remove_file(root.join("text_encoder/model.fp16.safetensors")).unwrap();
    write_safetensors(&root.join("text_encoder/model.safetensors"), blobs, None);
    (dir, root)
}

fn original() -> Vec<Blob> {
    read_blobs(&tiny_sd1().join("text_encoder/model.safetensors"))
}

fn load_err(root: &Path) -> (WeightsError, String) {
    match load_prompt_encoder(root, None, &Device::flex()) {
        Err(Error::Weights(e)) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            (e, msg)
        }
        Err(other) => panic!("expected a weights error, got {other}"),
        Ok(_) => panic!("expected a weights error, loading succeeded"),
    }
}

#[test]
fn missing_key_names_file_key_and_shape() {
    let blobs: Vec<Blob> = original().into_iter().filter(|b| b.0 != "text_model.final_layer_norm.bias").collect();
    let (_d, root) = model_with(&blobs);
    let (e, msg) = load_err(&root);
    assert!(matches!(e, WeightsError::MissingKeys { .. }));
    assert!(msg.contains("model.safetensors") && msg.contains("text_model.final_layer_norm.bias") && msg.contains("[32]"), "{msg}");
}

#[test]
fn unexpected_key_is_named() {
    let mut blobs = original();
    blobs.push(f32_blob("text_model.encoder.layers.9.mlp.fc1.weight", &[2, 2], &[0.0; 4]));
    let (_d, root) = model_with(&blobs);
    let (e, msg) = load_err(&root);
    assert!(matches!(e, WeightsError::UnexpectedKeys { .. }));
    assert!(msg.contains("text_model.encoder.layers.9.mlp.fc1.weight"), "{msg}");
}

#[test]
fn wrong_shape_names_expected_and_actual() {
    let blobs: Vec<Blob> = original()
        .into_iter()
        .map(|b| if b.0 == "text_model.encoder.layers.1.mlp.fc1.weight" { f32_blob(&b.0, &[38, 32], &vec![0.0; 38 * 32]) } else { b })
        .collect();
    let (_d, root) = model_with(&blobs);
    let (e, msg) = load_err(&root);
    match e {
        WeightsError::ShapeMismatch { key, expected, actual, .. } => {
            assert_eq!(key, "text_model.encoder.layers.1.mlp.fc1.weight");
            assert_eq!(expected.0, vec![37, 32]);
            assert_eq!(actual.0, vec![38, 32]);
        }
        other => panic!("{other}"),
    }
    assert!(msg.contains("[37, 32]") && msg.contains("[38, 32]"), "{msg}");
}

#[test]
fn wrong_dtype_is_refused() {
    let blobs: Vec<Blob> = original()
        .into_iter()
        .map(|(n, dt, s, b)| if n == "text_model.final_layer_norm.weight" { (n, Dtype::I32, s, b) } else { (n, dt, s, b) })
        .collect();
    let (_d, root) = model_with(&blobs);
    let (e, msg) = load_err(&root);
    assert!(matches!(e, WeightsError::UnsupportedDtype { ref key, ref actual, .. } if key == "text_model.final_layer_norm.weight" && actual == "I32"), "{msg}");
}

#[test]
fn truncated_file_names_a_key_and_the_sizes() {
    let (_d, root) = model_with(&original());
    let path = root.join("text_encoder/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let (e, msg) = load_err(&root);
    match e {
        WeightsError::Truncated { needed, actual, .. } => assert!(needed > actual && actual == bytes.len() as u64 - 1000),
        other => panic!("{other}"),
    }
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn corrupt_headers_are_reported() {
    let (_d, root) = model_with(&original());
    let path = root.join("text_encoder/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // 1. JSON garbage
    let mut bad = bytes.clone();
    bad[8] = b'#';
    std::fs::write(&path, &bad).unwrap();
    let (e, _) = load_err(&root);
    assert!(matches!(e, WeightsError::CorruptHeader { .. }));
    // 2. header length beyond the file
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let (e, _) = load_err(&root);
    assert!(matches!(e, WeightsError::CorruptHeader { .. }));
    // 3. tiny file
    std::fs::write(&path, b"abc").unwrap();
    let (e, _) = load_err(&root);
    assert!(matches!(e, WeightsError::CorruptHeader { .. }));
    // 4. not safetensors at all (an HTML error page saved as the file)
    std::fs::write(&path, b"<!DOCTYPE html><html><body>404 Not Found</body></html>").unwrap();
    let (e, _) = load_err(&root);
    assert!(matches!(e, WeightsError::CorruptHeader { .. }));
}

#[test]
fn missing_weights_file_lists_what_was_tried() {
    let (_d, root) = model_with(&original());
    std::fs::remove_file(root.join("text_encoder/model.safetensors")).unwrap();
    let (e, msg) = load_err(&root);
    assert!(matches!(e, WeightsError::NoWeightsFile { .. }));
    assert!(msg.contains("model.safetensors") && msg.contains("model.fp16.safetensors"), "{msg}");
}

fn encode_last(root: &Path) -> Vec<f32> {
    let enc = load_prompt_encoder(root, None, &Device::flex()).unwrap();
    let (_, out) = enc.encode(&["a photo of a cat"], false).unwrap();
    out.last_hidden_state.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

#[test]
fn keys_without_text_model_prefix_and_position_ids_buffer_load() {
    let reference = encode_last(&tiny_sd1());
    // transformers 5 layout: no `text_model.` prefix; old transformers: a position_ids buffer
    let mut blobs: Vec<Blob> =
        original().into_iter().map(|(n, dt, s, b)| (n.trim_start_matches("text_model.").to_string(), dt, s, b)).collect();
    blobs.push(("embeddings.position_ids".into(), Dtype::I64, vec![1, 77], (0..77i64).flat_map(|i| i.to_le_bytes()).collect()));
    let (_d, root) = model_with(&blobs);
    assert_eq!(encode_last(&root), reference);
}

#[test]
fn bf16_and_f16_weights_load_as_their_f32_values() {
    let reference = encode_last(&tiny_sd1());
    for dtype in [Dtype::BF16, Dtype::F16] {
        let blobs: Vec<Blob> = original()
            .into_iter()
            .map(|(n, _, s, b)| {
                let vals = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()));
                let bytes: Vec<u8> = match dtype {
                    Dtype::BF16 => vals.flat_map(|v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                    _ => vals.flat_map(|v| half::f16::from_f32(v).to_le_bytes()).collect(),
                };
                (n, dtype, s, bytes)
            })
            .collect();
        let (_d, root) = model_with(&blobs);
        let got = encode_last(&root);
        let d = max_abs_diff(&got, &reference);
        eprintln!("{dtype:?} weights vs f32 weights: max abs diff {d:.3e}");
        // rounded weights give a nearby but different model
        assert!(d > 0.0 && d < 0.3, "{dtype:?}: {d}");
    }
}
