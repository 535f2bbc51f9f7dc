//! `pseudoword encode --suppress` / `generate --suppress` (SuppressEOT) contracts: the SWR
//! embedding against the reference golden (tiny SD1) and, on an SD2-style folder (gelu, `!` pad
//! id 0, width 48), against an independent f64 reference (eigen-decomposition of X X^T instead
//! of an SVD); rows are selected by position, so `!` tokens inside the prompt stay untouched.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use common::reference_clip::RefClip;
use common::*;
use nalgebra::{DMatrix, SymmetricEigen};

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

/// SWR without an SVD: with `X = c[rows]^T = U S V^T`, `U S e^{-aS} V^T = U e^{-aS} U^T X`, and
/// `U`, `S^2` are the eigenvectors / eigenvalues of `X X^T`.
fn swr_reference(c: &[Vec<f64>], rows: &[usize], alpha: f64) -> Vec<Vec<f64>> {
    let d = c[0].len();
    let x = DMatrix::<f64>::from_fn(d, rows.len(), |i, j| c[rows[j]][i]);
    let eig = SymmetricEigen::new(&x * x.transpose());
    let f = DMatrix::from_diagonal(&eig.eigenvalues.map(|l| (-alpha * l.max(0.0).sqrt()).exp()));
    let x_hat = &eig.eigenvectors * f * eig.eigenvectors.transpose() * &x;
    let mut out = c.to_vec();
    for (j, &r) in rows.iter().enumerate() {
        for i in 0..d {
            out[r][i] = x_hat[(i, j)];
        }
    }
    out
}

#[test]
fn encode_suppress_writes_the_swr_embedding_of_the_reference() {
    let g = read_golden(&tiny_sd1().join("goldens/suppress_eot.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("enc.safetensors");
    let out = json(&pw(&[
        "encode", "--model", tiny_sd1().to_str().unwrap(), "--prompt", "a man without glasses", "--suppress", "glasses",
        "--out", out_path.to_str().unwrap(), "--device", "cpu",
    ]));
    assert_eq!(out["suppress"]["target_positions"], serde_json::json!([4]));
    assert_eq!(out["suppress"]["n"], 6);
    let got = read_golden(&out_path);
    assert_eq!(got.get("suppressed").shape, vec![1, 77, 32]);
    assert_close("encode --suppress: last_hidden_state", &got.get("last_hidden_state").f, &g.get("text_embeddings").f, 2e-5);
    assert_close("encode --suppress: suppressed", &got.get("suppressed").f, &g.get("text_embeddings_swr").f, 2e-5);
    assert_eq!(got.get("suppress_positions").i, g.get("swr_indices").i);

    // alpha reaches SWR: a different alpha, a different embedding
    let out2 = dir.path().join("enc2.safetensors");
    json(&pw(&[
        "encode", "--model", tiny_sd1().to_str().unwrap(), "--prompt", "a man without glasses", "--suppress", "glasses",
        "--suppress-alpha", "0.1", "--out", out2.to_str().unwrap(), "--device", "cpu",
    ]));
    assert!(max_abs_diff(&read_golden(&out2).get("suppressed").f, &g.get("text_embeddings_swr").f) > 1e-3);

    // a word that is not in the prompt: clear error, no panic
    let bad = pw(&[
        "encode", "--model", tiny_sd1().to_str().unwrap(), "--prompt", "a man without glasses", "--suppress", "hat",
        "--out", dir.path().join("x.safetensors").to_str().unwrap(), "--device", "cpu",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(err.contains("`hat`") && err.contains("not in the prompt") && err.contains("glasses</w>"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn encode_suppress_on_an_sd2_style_folder_selects_rows_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sd2");
    let weights = sd2_style_folder(&root);
    let prompt = "a photo of a cat!! wearing a hat";
    let out_path = dir.path().join("sd2.safetensors");
    let out = json(&pw(&[
        "encode", "--model", root.to_str().unwrap(), "--prompt", prompt, "--suppress", "hat", "--out", out_path.to_str().unwrap(), "--device", "cpu",
    ]));
    let input_ids = ids(&out["input_ids"]);
    // [BOS a photo of a cat ! ! wearing a hat EOS] then `!` (id 0) padding
    assert_eq!(input_ids[6..8], [0, 0]);
    assert_eq!(input_ids[11], 49407);
    assert_eq!(out["suppress"]["target_positions"], serde_json::json!([10]));
    assert_eq!(out["suppress"]["n"], 12);
    let got = read_golden(&out_path);
    let rows: Vec<usize> = got.get("suppress_positions").i.iter().map(|&r| r as usize).collect();
    let want_rows: Vec<usize> = std::iter::once(10).chain(11..77).collect();
    assert_eq!(rows, want_rows, "negative target, first EOT, every padding position (selected by position, not id)");

    let reference = RefClip { w: &weights, d: 48, heads: 6, inter: 61, layers: 3, gelu: true, eps: 1e-5 };
    let ids_u32: Vec<u32> = input_ids.iter().map(|&i| i as u32).collect();
    let c = reference.forward(&ids_u32);
    let want: Vec<f32> = swr_reference(&c, &rows, 1.0).into_iter().flatten().map(|v| v as f32).collect();
    let suppressed = &got.get("suppressed").f;
    let last = &got.get("last_hidden_state").f;
    assert_eq!(got.get("suppressed").shape, vec![1, 77, 48]);
    assert_close("sd2-style suppressed vs f64 eigen reference", suppressed, &want, 1e-4);
    // rows outside idx (incl. the `!` tokens at 6, 7 inside the prompt) are unchanged, bit for bit
    for r in (0..77).filter(|r| !rows.contains(r)) {
        assert_eq!(suppressed[r * 48..(r + 1) * 48], last[r * 48..(r + 1) * 48], "row {r} changed");
    }
    // and every row in idx did change
    for &r in &rows {
        assert!(max_abs_diff(&suppressed[r * 48..(r + 1) * 48], &last[r * 48..(r + 1) * 48]) > 1e-4, "row {r} unchanged");
    }
}

/// `generate` on the tiny model, 5 DDIM steps at 64x64, seed 3, plus `extra`.
fn generate(extra: &[&str]) -> Output {
    let model = tiny_sd1();
    let mut args = vec![
        "generate", "--model", model.to_str().unwrap(), "--prompt", "a man without glasses", "--seed", "3", "--steps", "5",
        "--width", "64", "--height", "64", "--scheduler", "ddim", "--device", "cpu",
    ];
    args.extend_from_slice(extra);
    pw(&args)
}

#[test]
fn generate_suppress_writes_suppressed_and_original_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (png, tensors) = (path("man.png"), path("man.safetensors"));
    let out = json(&generate(&["--suppress", "glasses", "--suppress-opt-iters", "2", "--out", &png, "--out-tensor", &tensors]));
    assert_eq!(out["out"], serde_json::json!([png]));
    let original = path("man-original.png");
    assert_eq!(out["suppress"]["original"], serde_json::json!([original]));
    assert_eq!(out["suppress"]["target_positions"], serde_json::json!([4]));
    assert!(Path::new(&png).is_file() && Path::new(&original).is_file());
    let text = pseudoword::pipeline::png_out::read_parameters(&std::fs::read(&png).unwrap()).unwrap();
    assert!(text.contains("SuppressEOT: \"glasses\"") && text.contains("iters 2"), "{text}");
    let text = pseudoword::pipeline::png_out::read_parameters(&std::fs::read(&original).unwrap()).unwrap();
    assert!(!text.contains("SuppressEOT"), "{text}");
    let suppressed = read_golden(Path::new(&tensors)).get("image").f.clone();
    assert_eq!(suppressed.len(), 64 * 64 * 3);

    // the same run without --suppress (= the original branch) gives another image
    let plain_t = path("plain.safetensors");
    json(&generate(&["--out", &path("plain.png"), "--out-tensor", &plain_t]));
    let plain = read_golden(Path::new(&plain_t)).get("image").f.clone();
    assert!(max_abs_diff(&plain, &suppressed) > 1e-3, "suppression changed nothing");

    // SWR only is accepted; a missing word is a clear error
    json(&generate(&["--suppress", "glasses", "--suppress-opt-off", "--out", &path("swr.png")]));
    let bad = generate(&["--suppress", "hat", "--out", &path("bad.png")]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("not in the prompt") && !err.contains("panicked"), "{err}");
    // suppression options need --suppress
    assert!(!generate(&["--suppress-alpha", "2", "--out", &path("x.png")]).status.success());
}

#[test]
fn bench_generate_suppress_reports_the_cost_ratio() {
    let out = json(&pw(&[
        "bench", "generate", "--arch", "bk-sdm-tiny", "--size", "64", "--steps", "1", "--device", "cpu", "--suppress", "--suppress-opt-iters", "1",
    ]));
    assert_eq!(out["map_size"], serde_json::json!([2, 2]), "BK-SDM-Tiny: coarsest down/up level of an 8x8 latent");
    assert_eq!(out["run_steps"], 50);
    assert_eq!(out["run_ito_steps"], 10);
    for k in ["plain_step_seconds", "swr_step_seconds", "ito_step_seconds"] {
        assert_eq!(out[k].as_array().unwrap().len(), 1, "{k}");
    }
    let ratio = out["cost_ratio"].as_f64().unwrap();
    let swr_only = out["cost_ratio_swr_only"].as_f64().unwrap();
    assert!(ratio.is_finite() && swr_only > 1.0 && ratio > swr_only, "{out}");
}

/// Writes random weights for `specs` (matrices ~ 1/sqrt(fan_in), norm scales ~ 1, small biases).
fn write_random(path: &Path, specs: &[pseudoword::weights::ParamSpec], rng: &mut Rng) {
    let blobs: Vec<Blob> = specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let v: Vec<f32> = if s.shape.len() >= 2 {
                let fan_in: usize = s.shape[1..].iter().product();
                rng.vec(n, 1.7 / (fan_in as f32).sqrt())
            } else if s.key.ends_with("norm.weight") || s.key.contains("norm") && s.key.ends_with(".weight") {
                rng.vec(n, 0.1).into_iter().map(|x| x + 1.0).collect()
            } else {
                rng.vec(n, 0.05)
            };
            f32_blob(&s.key, &s.shape, &v)
        })
        .collect();
    write_safetensors(path, &blobs, None);
}

/// Completes the SD2-style folder with a UNet (linear projections, per-block head counts, width
/// 48 cross-attention), a VAE and an SD2-like scheduler config (DDIM, v_prediction).
fn sd2_style_full_folder(root: &Path) {
    sd2_style_folder(root);
    let mut rng = Rng(0x5d2_0002);
    let unet = serde_json::json!({
        "_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
        "block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": [2, 4],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 48, "norm_num_groups": 8, "use_linear_projection": true, "upcast_attention": true,
        "flip_sin_to_cos": true, "freq_shift": 0
    });
    std::fs::create_dir_all(root.join("unet")).unwrap();
    std::fs::write(root.join("unet/config.json"), unet.to_string()).unwrap();
    let c = pseudoword::models::UNet2DConditionConfig::from_json(&unet.to_string(), "unet/config.json").unwrap();
    write_random(&root.join("unet/diffusion_pytorch_model.safetensors"), &pseudoword::models::UNet2DConditionModel::param_specs(&c), &mut rng);
    let vae = serde_json::json!({
        "_class_name": "AutoencoderKL", "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "latent_channels": 4,
        "norm_num_groups": 4, "in_channels": 3, "out_channels": 3, "scaling_factor": 0.18215, "sample_size": 64,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    });
    std::fs::create_dir_all(root.join("vae")).unwrap();
    std::fs::write(root.join("vae/config.json"), vae.to_string()).unwrap();
    let c = pseudoword::models::AutoencoderKLConfig::from_json(&vae.to_string(), "vae/config.json").unwrap();
    write_random(&root.join("vae/diffusion_pytorch_model.safetensors"), &pseudoword::models::AutoencoderKL::param_specs(&c), &mut rng);
    std::fs::create_dir_all(root.join("scheduler")).unwrap();
    let sched = serde_json::json!({
        "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": false,
        "steps_offset": 1, "skip_prk_steps": true
    });
    std::fs::write(root.join("scheduler/scheduler_config.json"), sched.to_string()).unwrap();
}

#[test]
fn generate_suppress_on_an_sd2_style_folder() {
    // v_prediction DDIM, linear projections, 2 / 4 heads, `!` padding, width-48 text encoder
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sd2");
    sd2_style_full_folder(&root);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let common = ["generate", "--model", root.to_str().unwrap(), "--prompt", "a photo of a cat!! wearing a hat", "--seed", "5", "--steps", "5", "--device", "cpu"];
    let mut args = common.to_vec();
    let (png, t) = (path("hat.png"), path("hat.safetensors"));
    args.extend_from_slice(&["--suppress", "hat", "--suppress-opt-iters", "2", "--negative-prompt", "blurry", "--out", &png, "--out-tensor", &t]);
    let out = json(&pw(&args));
    assert_eq!(out["suppress"]["target_positions"], serde_json::json!([10]));
    assert!(Path::new(&path("hat-original.png")).is_file());
    let suppressed = read_golden(Path::new(&t)).get("image").f.clone();
    assert_eq!(suppressed.len(), 64 * 64 * 3);
    assert!(suppressed.iter().all(|v| (0.0..=1.0).contains(v)));
    let mut args = common.to_vec();
    let (png2, t2) = (path("plain.png"), path("plain.safetensors"));
    args.extend_from_slice(&["--negative-prompt", "blurry", "--out", &png2, "--out-tensor", &t2]);
    json(&pw(&args));
    assert!(max_abs_diff(&read_golden(Path::new(&t2)).get("image").f, &suppressed) > 1e-4, "suppression changed nothing");
}
