//! The `pseudoword` CLI contracts (`tokenize`, `encode`), on the tiny SD1 fixture and on an
//! SD2-style folder built here (gelu, pad `!`, width 48, 6 heads, 3 layers, legacy eos id 2),
//! checked against a naive f64 reference implementation.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use common::reference_clip::RefClip;
use common::*;

fn pw(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pseudoword")).args(args).output().unwrap();
    if !out.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "command failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn tokenize_prints_pipeline_ids_and_tokens() {
    let model = tiny_sd1();
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap()).unwrap();
    for p in golden["prompts"].as_array().unwrap().iter().take(8) {
        let out = json(&pw(&["tokenize", "--model", model.to_str().unwrap(), p["prompt"].as_str().unwrap()]));
        assert_eq!(ids(&out["input_ids"]), ids(&p["input_ids_77"]), "{}", p["prompt"]);
        assert_eq!(out["tokens"].as_array().unwrap().len(), 77);
        let n = p["tokens"].as_array().unwrap().len().min(77);
        assert_eq!(out["tokens"].as_array().unwrap()[..n], p["tokens"].as_array().unwrap()[..n]);
    }
}

#[test]
fn tokenize_with_a_two_vector_embedding_expands_the_prompt() {
    let emb = fixtures().join("embeddings/learned_embeds_2vec.safetensors");
    let out = json(&pw(&["tokenize", "--model", tiny_sd1().to_str().unwrap(), "--embedding", emb.to_str().unwrap(), "a photo of a <chelsea>"]));
    assert_eq!(out["converted_prompt"], "a photo of a <chelsea> <chelsea>_1");
    assert_eq!(ids(&out["input_ids"])[..8], [49406, 320, 1125, 539, 320, 49408, 49409, 49407]);
}

#[test]
fn encode_writes_last_hidden_state_matching_the_golden() {
    let g = read_golden(&tiny_sd1().join("goldens/text_encoder.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("enc.safetensors");
    let out = json(&pw(&[
        "encode", "--model", tiny_sd1().to_str().unwrap(), "--prompt", "a photo of a cat", "--out", out_path.to_str().unwrap(), "--device", "cpu",
    ]));
    assert_eq!(out["shape"], serde_json::json!([1, 77, 32]));
    let got = read_golden(&out_path);
    assert_eq!(got.get("last_hidden_state").shape, vec![1, 77, 32]);
    let want = &g.get("last_hidden_state").f[77 * 32..2 * 77 * 32];
    assert_close("cli encode", &got.get("last_hidden_state").f, want, 2e-5);
}

#[test]
fn encode_with_embedding_matches_the_embeddings_loaded_golden() {
    let g = read_golden(&tiny_sd1().join("goldens/embeddings_loaded.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("enc.safetensors");
    let emb = format!("{}=<chelsea>", fixtures().join("embeddings/chelsea-a1111-2vec.safetensors").display());
    json(&pw(&[
        "encode", "--model", tiny_sd1().to_str().unwrap(), "--embedding", &emb, "--prompt", "a photo of a <chelsea>",
        "--out", out_path.to_str().unwrap(), "--device", "cpu",
    ]));
    assert_close("cli encode + 2vec embedding", &read_golden(&out_path).get("last_hidden_state").f, &g.get("prompt_embeds_2vec").f, 2e-5);
}

#[test]
fn errors_are_clear_and_exit_nonzero() {
    let out = pw(&["encode", "--model", "/nonexistent/model", "--prompt", "x", "--out", "/tmp/x.safetensors", "--device", "cpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = pw(&["tokenize", "--model", tiny_sd1().to_str().unwrap(), "--device", "tpu", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device"));
}

#[test]
fn device_wgpu_either_works_or_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("enc.safetensors");
    let out = pw(&["encode", "--model", tiny_sd1().to_str().unwrap(), "--prompt", "a photo of a cat", "--out", out_path.to_str().unwrap(), "--device", "wgpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    if out.status.success() {
        let g = read_golden(&tiny_sd1().join("goldens/text_encoder.safetensors"));
        assert_close("wgpu encode", &read_golden(&out_path).get("last_hidden_state").f, &g.get("last_hidden_state").f[77 * 32..2 * 77 * 32], 1e-4);
    } else {
        assert!(err.contains("--device cpu"), "{err}");
    }
}

/// Writes an SD2-style model folder: tokenizer with pad `!`, a random CLIP text encoder with gelu.
fn sd2_style_folder(root: &Path) -> HashMap<String, Vec<f32>> {
    copy_dir(&tiny_sd1().join("tokenizer"), &root.join("tokenizer"));
    let cfg_path = root.join("tokenizer/tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["pad_token"] = "!".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let map_path = root.join("tokenizer/special_tokens_map.json");
    let mut map: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&map_path).unwrap()).unwrap();
    map["pad_token"] = "!".into();
    std::fs::write(&map_path, map.to_string()).unwrap();

    let (d, h, l, inter, vocab) = (48usize, 6usize, 3usize, 61usize, 49408usize);
    std::fs::create_dir_all(root.join("text_encoder")).unwrap();
    let config = serde_json::json!({
        "architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": d, "intermediate_size": inter,
        "num_attention_heads": h, "num_hidden_layers": l, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
        "vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": 512,
        "torch_dtype": "float32", "model_type": "clip_text_model"
    });
    std::fs::write(root.join("text_encoder/config.json"), config.to_string()).unwrap();
    let mut rng = Rng(0x5d2_0001);
    let mut w: HashMap<String, Vec<f32>> = HashMap::new();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![];
    let mut add = |k: String, shape: Vec<usize>, scale: f32, offset: f32, w: &mut HashMap<String, Vec<f32>>| {
        let n = shape.iter().product();
        w.insert(k.clone(), rng.vec(n, scale).into_iter().map(|v| v + offset).collect());
        shapes.push((k, shape));
    };
    add("text_model.embeddings.token_embedding.weight".into(), vec![vocab, d], 1.0, 0.0, &mut w);
    add("text_model.embeddings.position_embedding.weight".into(), vec![77, d], 0.5, 0.0, &mut w);
    for i in 0..l {
        let p = format!("text_model.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}.self_attn.{proj}.weight"), vec![d, d], 1.7 / (d as f32).sqrt(), 0.0, &mut w);
            add(format!("{p}.self_attn.{proj}.bias"), vec![d], 0.1, 0.0, &mut w);
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}.{ln}.weight"), vec![d], 0.3, 1.0, &mut w);
            add(format!("{p}.{ln}.bias"), vec![d], 0.1, 0.0, &mut w);
        }
        add(format!("{p}.mlp.fc1.weight"), vec![inter, d], 1.7 / (d as f32).sqrt(), 0.0, &mut w);
        add(format!("{p}.mlp.fc1.bias"), vec![inter], 0.1, 0.0, &mut w);
        add(format!("{p}.mlp.fc2.weight"), vec![d, inter], 1.7 / (inter as f32).sqrt(), 0.0, &mut w);
        add(format!("{p}.mlp.fc2.bias"), vec![d], 0.1, 0.0, &mut w);
    }
    add("text_model.final_layer_norm.weight".into(), vec![d], 0.3, 1.0, &mut w);
    add("text_model.final_layer_norm.bias".into(), vec![d], 0.1, 0.0, &mut w);
    let blobs: Vec<Blob> = shapes.iter().map(|(k, s)| f32_blob(k, s, &w[k])).collect();
    write_safetensors(&root.join("text_encoder/model.safetensors"), &blobs, None);
    w
}

#[test]
fn sd2_style_folder_pads_with_bang_and_encodes_with_gelu() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sd2");
    let weights = sd2_style_folder(&root);
    let prompt = "a photo of a cat!! wearing a hat";
    let tok = json(&pw(&["tokenize", "--model", root.to_str().unwrap(), prompt]));
    let input_ids = ids(&tok["input_ids"]);
    // `!` is the pad token (id 0) and therefore a special token split out of the prompt
    assert_eq!(input_ids[..11], [49406, 320, 1125, 539, 320, 2368, 0, 0, 3309, 320, 3801]);
    assert_eq!(input_ids[11], 49407);
    assert!(input_ids[12..].iter().all(|&i| i == 0), "padded with `!` = 0");
    assert_eq!(tok["pad_token_id"], 0);

    let out_path = dir.path().join("sd2.safetensors");
    let out = json(&pw(&["encode", "--model", root.to_str().unwrap(), "--prompt", prompt, "--out", out_path.to_str().unwrap(), "--device", "cpu"]));
    assert_eq!(out["shape"], serde_json::json!([1, 77, 48]));
    let got = read_golden(&out_path).get("last_hidden_state").f.clone();
    let reference = RefClip { w: &weights, d: 48, heads: 6, inter: 61, layers: 3, gelu: true, eps: 1e-5 };
    let ids_u32: Vec<u32> = input_ids.iter().map(|&i| i as u32).collect();
    let want: Vec<f32> = reference.forward(&ids_u32).into_iter().flatten().map(|v| v as f32).collect();
    assert_close("sd2-style encode vs f64 reference", &got, &want, 1e-4);
    // and gelu really differs from quick_gelu here (the test would notice a wrong activation)
    let quick = RefClip { gelu: false, ..reference };
    let q: Vec<f32> = quick.forward(&ids_u32).into_iter().flatten().map(|v| v as f32).collect();
    assert!(max_abs_diff(&q, &want) > 1e-3);
}
