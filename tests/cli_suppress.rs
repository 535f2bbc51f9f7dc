//! `pseudoword encode --suppress` / `generate --suppress` (SuppressEOT) contracts: the SWR
//! embedding against the reference golden (tiny SD1) and, on an SD2-style folder (gelu, `!` pad
//! id 0, width 48), against an independent f64 reference (eigen-decomposition of X X^T instead
//! of an SVD); rows are selected by position, so `!` tokens inside the prompt stay untouched.

mod common;

use std::path::Path;
use std::process::Output;

use common::cli::{ids, json, pw};
use common::reference_clip::RefClip;
use common::sd2::{sd2_style_folder, sd2_style_full_folder};
use common::*;
use nalgebra::{DMatrix, SymmetricEigen};

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
