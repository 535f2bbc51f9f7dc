//! Textual-inversion training parity with diffusers' `examples/textual_inversion/textual_inversion.py`
//! (goldens `tests/fixtures/tiny-sd1/goldens/ti_{1,2}vec.safetensors`): initial rows, loss and
//! row gradient of step 0, then 5 AdamW steps (loss, gradient, rows after every step).

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use pseudoword::native::load_stable_diffusion;
use pseudoword::train::{Batch, TextualInversionTrainer, TrainConfig, TrainError};

/// Per element `|got - want| <= atol + rtol * |want|`; prints the max abs / rel error.
#[track_caller]
fn assert_rel(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs() - (atol + rtol * w.abs())).fold(f32::NEG_INFINITY, f32::max);
    let rel = got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1e-12)).fold(0.0, f32::max);
    eprintln!("{what}: max abs diff {:.3e}, max rel diff {rel:.3e}", max_abs_diff(got, want));
    assert!(worst <= 0.0, "{what}: off by {worst} beyond rtol {rtol} / atol {atol}");
}

fn batch(g: &GoldenFile, k: usize, device: &Device) -> Batch {
    let lat = g.get("latents");
    let [_, b, c, h, w] = lat.shape[..] else { panic!("latents shape {:?}", lat.shape) };
    let per = b * c * h * w;
    let slice = |name: &str| {
        let v = &g.get(name).f[k * per..(k + 1) * per];
        Tensor::<4>::from_data(TensorData::new(v.to_vec(), [b, c, h, w]), device)
    };
    let ids = g.get("input_ids");
    let s = ids.shape[1];
    Batch {
        latents: slice("latents"),
        noise: slice("noise"),
        timesteps: vec![g.get("timesteps").i[k] as usize],
        input_ids: vec![ids.i[k * s..(k + 1) * s].iter().map(|&i| i as u32).collect()],
    }
}

fn run(name: &str, n_vectors: usize, gradient_checkpointing: bool) {
    let device = Device::flex();
    let g = read_golden(&tiny_sd1().join(format!("goldens/{name}.safetensors")));
    let tokens: Vec<String> = serde_json::from_str(&g.metadata["placeholder_tokens"]).unwrap();
    let ids: Vec<u32> = serde_json::from_str(&g.metadata["placeholder_token_ids"]).unwrap();
    let lr: f64 = g.metadata["lr"].parse().unwrap();
    let init_word = &g.metadata["initializer_token"];
    let init_id: u32 = g.metadata["initializer_token_id"].parse().unwrap();
    assert_eq!(tokens.len(), n_vectors);

    let mut sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    if gradient_checkpointing {
        // several query chunks per self-attention (32x32 = 1024 queries), so the chunked
        // attention backward is exercised
        sd.unet.set_query_chunk_size(Some(100));
    }
    let config = TrainConfig { learning_rate: lr, gradient_checkpointing, ..TrainConfig::default() };
    let mut ti = pollster::block_on(TextualInversionTrainer::new(sd, &tokens[0], init_word, n_vectors, config)).unwrap();
    assert_eq!(ti.placeholder_tokens(), &tokens[..]);
    assert_eq!(ti.placeholder_ids(), &ids[..]);
    assert_eq!(ti.initializer_id(), init_id);
    assert_eq!(ti.rows(), &g.get("init_rows").f[..], "init_rows must be the initializer row exactly");

    // the recorded prompts tokenize to the recorded ids
    let prompts: Vec<String> = serde_json::from_str(&g.metadata["prompts"]).unwrap();
    let templates = ["a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}", "a photo of a clean {}"];
    let want_ids = g.get("input_ids");
    for (k, (p, t)) in prompts.iter().zip(templates).enumerate() {
        assert_eq!(&t.replace("{}", &ti.placeholder_string()), p);
        let got: Vec<i64> = ti.prompt_ids(t).iter().map(|&i| i as i64).collect();
        assert_eq!(got, want_ids.i[k * 77..(k + 1) * 77], "input_ids of `{p}`");
    }

    // step 0 inputs, before any update
    let (loss0, grad0) = pollster::block_on(ti.loss_and_grad(&batch(&g, 0, &device))).unwrap();
    assert_close(&format!("{name} loss0"), &[loss0], &g.get("loss0").f, 5e-6);
    assert_rel(&format!("{name} grad0"), &grad0, &g.get("grad0").f, 1e-4, 1e-7);

    let per = n_vectors * 32;
    let losses = &g.get("losses").f;
    let grads = &g.get("grads").f;
    let rows_after = &g.get("rows_after_step").f;
    for k in 0..losses.len() {
        let r = pollster::block_on(ti.step(&batch(&g, k, &device))).unwrap();
        assert!(r.updated);
        assert_eq!(r.optimizer_steps, k as u64 + 1);
        assert_close(&format!("{name} losses[{k}]"), &[r.loss], &losses[k..k + 1], 5e-6);
        assert_rel(&format!("{name} grads[{k}]"), &r.grad, &grads[k * per..(k + 1) * per], 1e-4, 1e-7);
        assert_close(&format!("{name} rows_after_step[{k}]"), ti.rows(), &rows_after[k * per..(k + 1) * per], 1e-5);
    }
    assert_close(&format!("{name} final_rows"), ti.rows(), &g.get("final_rows").f, 1e-5);
    let emb = ti.learned_embedding();
    assert_eq!((emb.token.as_str(), emb.n, emb.dim), (tokens[0].as_str(), n_vectors, 32));
}

#[test]
fn ti_1vec_matches_diffusers() {
    run("ti_1vec", 1, false);
}

/// The checkpointed UNet backward (modules re-run one at a time) gives the same numbers.
#[test]
fn ti_1vec_with_gradient_checkpointing_matches_diffusers() {
    run("ti_1vec", 1, true);
}

#[test]
fn ti_2vec_matches_diffusers() {
    run("ti_2vec", 2, true);
}

#[test]
fn multi_token_initializer_is_a_typed_error() {
    let sd = load_stable_diffusion(&tiny_sd1(), None, &Device::flex()).unwrap();
    let r = pollster::block_on(TextualInversionTrainer::new(sd, "<chelsea>", "tabby cat", 1, TrainConfig::default()));
    match r {
        Err(TrainError::InitializerNotOneToken { word, tokens }) => {
            assert_eq!(word, "tabby cat");
            assert_eq!(tokens.len(), 2, "{tokens:?}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a two-token initializer was accepted"),
    }
}
