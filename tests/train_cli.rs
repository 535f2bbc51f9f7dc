//! `pseudoword train`: the CLI contract (one JSON line per step), `--replay` against diffusers'
//! goldens, a v-prediction SD2-style folder against an independent in-test computation, photo
//! training with checkpoints / exact resume / previews, the divergence guard, and bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::{Device, Tensor, TensorData};
use common::sd2::sd2_style_full_folder;
use common::*;
use pseudoword::embedding_files::{TextualInversion, read_embedding};
use pseudoword::models::UNetCapture;
use pseudoword::native::load_stable_diffusion;
use pseudoword::tokenizer::ClipTokenizer;
use safetensors::Dtype;

fn pw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pseudoword")).args(args).output().unwrap()
}

/// Runs `train`, asserts success, returns the step lines.
fn train_ok(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["train", "--device", "cpu"];
    all.extend_from_slice(args);
    let out = pw(&all);
    assert!(out.status.success(), "train failed: {}", String::from_utf8_lossy(&out.stderr));
    lines(&out)
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn read_emb(path: &Path) -> TextualInversion {
    read_embedding(&std::fs::read(path).unwrap(), s(path), None).unwrap()
}

#[test]
fn replay_reproduces_the_diffusers_goldens() {
    let dir = tempfile::tempdir().unwrap();
    for (name, n, format, ext) in [("ti_1vec", "1", "a1111-pt", "pt"), ("ti_2vec", "2", "diffusers", "safetensors")] {
        let golden_path = tiny_sd1().join(format!("goldens/{name}.safetensors"));
        let g = read_golden(&golden_path);
        let out = dir.path().join(format!("{name}.{ext}"));
        let steps = train_ok(&[
            "--model", s(&tiny_sd1()), "--token", "<chelsea>", "--init-word", "cat", "--vectors", n, "--replay", s(&golden_path),
            "--out", s(&out), "--format", format, "--log-rows",
        ]);
        assert_eq!(steps.len(), 5, "--steps defaults to the recorded batches");
        let losses: Vec<f32> = steps.iter().map(|l| l["loss"].as_f64().unwrap() as f32).collect();
        assert_close(&format!("{name} losses"), &losses, &g.get("losses").f, 5e-6);
        let rows: Vec<f32> = steps.iter().flat_map(|l| f64s(&l["rows"])).map(|x| x as f32).collect();
        assert_close(&format!("{name} rows after every step"), &rows, &g.get("rows_after_step").f, 1e-5);
        for (k, l) in steps.iter().enumerate() {
            assert_eq!(l["step"], k as u64 + 1);
            assert_eq!(l["timesteps"][0].as_i64().unwrap(), g.get("timesteps").i[k]);
            assert!(l["eta_s"].as_f64().is_some() && l["lr"].as_f64() == Some(0.005));
        }
        let emb = read_emb(&out);
        assert_eq!(emb.token, "<chelsea>");
        assert_close(&format!("{name} {format} file"), &emb.vectors, &g.get("final_rows").f, 1e-5);
    }
}

/// scaled_linear betas (0.00085 .. 0.012, 1000 steps) -> alphas_cumprod, in f64.
fn alphas_cumprod() -> Vec<f64> {
    let (a, b) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let mut acp = 1.0;
    (0..1000)
        .map(|i| {
            let beta = (a + (b - a) * i as f64 / 999.0).powi(2);
            acp *= 1.0 - beta;
            acp
        })
        .collect()
}

#[test]
fn replay_on_an_sd2_style_v_prediction_folder_matches_an_independent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sd2");
    sd2_style_full_folder(&root);
    // the recording: 3 steps of a 1-image batch at 8x8 latents
    let mut tok = ClipTokenizer::from_dir(&root.join("tokenizer")).unwrap();
    let ph = tok.add_tokens(&["<thing>"]).unwrap()[0];
    let prompts = ["a photo of a <thing>", "a rendering of a <thing>", "the photo of a <thing>"];
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode_padded(p).ids).collect();
    assert!(ids[0].contains(&ph) && ids[0][76] == 0, "SD2 pads with `!` (0)");
    let mut rng = Rng(77);
    let per = 4 * 8 * 8;
    let latents = rng.vec(3 * per, 1.0);
    let noise = rng.vec(3 * per, 1.7);
    let timesteps: [i64; 3] = [999, 480, 3];
    let replay = dir.path().join("replay.safetensors");
    let i64_blob = |name: &str, shape: Vec<usize>, v: Vec<i64>| (name.to_string(), Dtype::I64, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    write_safetensors(
        &replay,
        &[
            f32_blob("latents", &[3, 1, 4, 8, 8], &latents),
            f32_blob("noise", &[3, 1, 4, 8, 8], &noise),
            i64_blob("timesteps", vec![3], timesteps.to_vec()),
            i64_blob("input_ids", vec![3, 77], ids.iter().flatten().map(|&i| i as i64).collect()),
        ],
        None,
    );
    let out = dir.path().join("thing.safetensors");
    let steps = train_ok(&[
        "--model", s(&root), "--token", "<thing>", "--init-word", "cat", "--replay", s(&replay), "--out", s(&out), "--log-rows", "--lr", "0.05",
    ]);
    assert_eq!(steps.len(), 3);

    // independent loss: text encoder with the rows as a loaded embedding (plain forward), UNet
    // on the noisy latent built here, v = sqrt(acp) n - sqrt(1 - acp) x, MSE in f64
    let device = Device::flex();
    let mut sd = load_stable_diffusion(&root, None, &device).unwrap();
    let init_row = {
        let w = sd.prompt.text_encoder.text_model.embeddings.token_embedding.weight.val();
        let v = w.slice([2368..2369, 0..48]).into_data().try_to_vec::<f32>().unwrap();
        v
    };
    let acp = alphas_cumprod();
    let mut rows = init_row;
    let mut added = false;
    for (k, line) in steps.iter().enumerate() {
        let emb = TextualInversion { token: "<thing>".into(), vectors: rows.clone(), n: 1, dim: 48 };
        if added {
            let w = &mut sd.prompt.text_encoder.text_model.embeddings.token_embedding.weight;
            let old = w.val();
            let row = Tensor::<2>::from_data(TensorData::new(rows.clone(), [1, 48]), &device);
            *w = burn::module::Param::from_tensor(old.slice_assign([ph as usize..ph as usize + 1, 0..48], row));
        } else {
            sd.prompt.add_embedding("test", &emb).unwrap();
            added = true;
        }
        let (_, enc) = sd.prompt.encode(&[prompts[k]], false).unwrap();
        let t = timesteps[k] as usize;
        let (a, b) = (acp[t].sqrt(), (1.0 - acp[t]).sqrt());
        let x = &latents[k * per..(k + 1) * per];
        let n = &noise[k * per..(k + 1) * per];
        let noisy: Vec<f32> = x.iter().zip(n).map(|(&x, &n)| (a * x as f64 + b * n as f64) as f32).collect();
        let noisy = Tensor::<4>::from_data(TensorData::new(noisy, [1, 4, 8, 8]), &device);
        let pred = sd.unet.forward(noisy, &[t as f64], enc.last_hidden_state, &mut UNetCapture::none()).into_data().try_to_vec::<f32>().unwrap();
        let loss = pred.iter().enumerate().map(|(i, &p)| (p as f64 - (a * n[i] as f64 - b * x[i] as f64)).powi(2)).sum::<f64>() / per as f64;
        let got = line["loss"].as_f64().unwrap();
        eprintln!("sd2 v-prediction step {}: loss {got} vs independent {loss} (diff {:.2e})", k + 1, (got - loss).abs());
        assert!((got - loss).abs() < 5e-6 * loss.max(1.0), "step {}: {got} vs {loss}", k + 1);
        // an epsilon target would give a clearly different loss
        let eps_loss = pred.iter().zip(n).map(|(&p, &n)| (p as f64 - n as f64).powi(2)).sum::<f64>() / per as f64;
        assert!((eps_loss - loss).abs() > 1e-3, "v and epsilon targets must differ here");
        rows = f64s(&line["rows"]).into_iter().map(|x| x as f32).collect();
    }
    assert_close("sd2 file rows", &read_emb(&out).vectors, &rows, 0.0);
}

fn photo_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["--model", model, "--images", "tests/fixtures/photos/chelsea_1_center.jpg", "tests/fixtures/photos/chelsea_5_right.png",
        "--token", "<cat-toy>", "--init-word", "cat", "--resolution", "128", "--seed", "11", "--batch", "2", "--out", out]
}

#[test]
fn photo_training_checkpoints_resume_exactly_and_writes_previews() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_sd1();
    // uninterrupted: 4 steps
    let full = dir.path().join("full.safetensors");
    let a = train_ok(&[photo_args(s(&model), s(&full)), vec!["--steps", "4"]].concat());
    assert_eq!(a.len(), 4);
    assert!(a.iter().all(|l| l["loss"].as_f64().unwrap().is_finite() && l["timesteps"].as_array().unwrap().len() == 2));
    // interrupted after 2 (checkpoint + preview), then resumed to 4
    let part = dir.path().join("part.safetensors");
    let b = train_ok(&[photo_args(s(&model), s(&part)), vec!["--steps", "2", "--save-every", "2", "--preview-every", "2", "--preview-steps", "2"]].concat());
    assert_eq!(b.len(), 2);
    let ckpt = dir.path().join("part.checkpoint.safetensors");
    assert_eq!(b[1]["saved"][1], s(&ckpt));
    let preview = dir.path().join("part.preview-00002.png");
    assert_eq!(b[1]["preview"], s(&preview));
    let img = image::open(&preview).unwrap();
    assert_eq!((img.width(), img.height()), (256, 256));
    let c = train_ok(&[photo_args(s(&model), s(&part)), vec!["--steps", "4", "--resume", s(&ckpt)]].concat());
    assert_eq!(c.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 4]);
    for k in 0..2 {
        assert_eq!(c[k]["loss"], a[k + 2]["loss"], "resumed step {} draws the same batch and gets the same loss", k + 3);
        assert_eq!(c[k]["timesteps"], a[k + 2]["timesteps"]);
    }
    assert_eq!(read_emb(&part).vectors, read_emb(&full).vectors, "resume is exact");
    // the learned rows moved away from the initializer
    let first: Vec<f64> = f64s(&a[0]["row_norms"]);
    assert!(first[0] > 0.0);
}

#[test]
fn a_nan_batch_rolls_back_and_training_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let g = tiny_sd1().join("goldens/ti_1vec.safetensors");
    let mut blobs = read_blobs(&g);
    let lat = blobs.iter_mut().find(|b| b.0 == "latents").unwrap();
    let per = 4 * 32 * 32 * 4;
    for b in &mut lat.3[2 * per..2 * per + 64] {
        *b = 0xff; // NaN payloads in micro-batch 2
    }
    let replay = dir.path().join("nan.safetensors");
    write_safetensors(&replay, &blobs, None);
    let out = dir.path().join("e.safetensors");
    let steps = train_ok(&[
        "--model", s(&tiny_sd1()), "--token", "<chelsea>", "--init-word", "cat", "--replay", s(&replay), "--out", s(&out), "--save-every", "1",
        "--steps", "4",
    ]);
    let rb: Vec<&serde_json::Value> = steps.iter().filter(|l| l.get("rollback").is_some()).collect();
    assert_eq!(rb.len(), 1, "{steps:?}");
    assert!(rb[0]["rollback"]["reason"].as_str().unwrap().contains("NaN"), "{}", rb[0]);
    assert_eq!(rb[0]["rollback"]["to_step"], 2);
    assert_eq!(rb[0]["rollback"]["lr_scale"], 0.5);
    assert_eq!(steps.last().unwrap()["step"], 4);
    assert_eq!(steps.last().unwrap()["lr"], 0.0025);
    assert!(read_emb(&out).vectors.iter().all(|v| v.is_finite()));
}

#[test]
fn divergence_gives_up_and_keeps_the_last_good_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let g = tiny_sd1().join("goldens/ti_1vec.safetensors");
    let out = dir.path().join("e.safetensors");
    let o = pw(&["train", "--device", "cpu", "--model", s(&tiny_sd1()), "--token", "<chelsea>", "--init-word", "cat", "--replay", s(&g), "--out", s(&out), "--lr", "1e6", "--steps", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("diverged") && err.contains("lower the learning rate"), "{err}");
    let l = lines(&o);
    assert_eq!(l.len(), 3, "three roll-backs before giving up: {l:?}");
    let lr: Vec<f64> = l.iter().map(|x| x["rollback"]["lr_scale"].as_f64().unwrap()).collect();
    assert_eq!(lr, vec![0.5, 0.25, 0.125]);
    // the file holds the last good (initial) rows
    let init = read_golden(&g).get("init_rows").f.clone();
    assert_eq!(read_emb(&out).vectors, init);
}

#[test]
fn bad_training_input_gets_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.safetensors");
    let model = tiny_sd1();
    let run = |extra: &[&str]| {
        let mut a = vec!["train", "--device", "cpu", "--model", s(&model), "--out", s(&out), "--steps", "1", "--resolution", "64"];
        a.extend_from_slice(extra);
        let o = pw(&a);
        assert!(!o.status.success(), "{extra:?} should fail");
        assert!(o.stdout.is_empty());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let photo = "tests/fixtures/photos/chelsea_1_center.jpg";
    let e = run(&["--images", photo, "--token", "<x>", "--init-word", "golden retriever"]);
    assert!(e.contains("must be exactly one") && e.contains("golden retriever"), "{e}");
    let e = run(&["--images", photo, "--token", "cat", "--init-word", "dog"]);
    assert!(e.contains("cat") && e.contains("already"), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = run(&["--images", s(&empty), "--token", "<x>", "--init-word", "cat"]);
    assert!(e.contains("no training photos"), "{e}");
    let e = run(&["--images", photo, "tests/fixtures/photos/odd/not_an_image.jpg", "--token", "<x>", "--init-word", "cat"]);
    assert!(e.contains("not_an_image.jpg") && e.contains("JPEG, PNG or WebP"), "{e}");
    let e = run(&["--images", "tests/fixtures/photos/odd/one_pixel.png", "--token", "<x>", "--init-word", "cat"]);
    assert!(e.contains("1x1"), "{e}");
    // a malicious pickle is neither a checkpoint nor a replay file
    let evil = fixtures().join("embeddings/chelsea-a1111-1vec.pt");
    let e = run(&["--images", photo, "--token", "<x>", "--init-word", "cat", "--resume", s(&evil)]);
    assert!(e.contains("not a usable training checkpoint"), "{e}");
    assert!(!out.exists(), "nothing written on bad input");
}
