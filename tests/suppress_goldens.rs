//! SuppressEOT parity with the authors' reference implementation (goldens in
//! tests/fixtures/tiny-sd1/goldens/suppress_eot.safetensors, see tests/fixtures/README.md
//! "SuppressEOT"): SWR, aggregated attention maps, masks, the ITO loss / gradient / updates, and
//! the end-to-end two-branch run. Max errors are printed (run with `--nocapture`).

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use pseudoword::pipeline::Denoise;
use pseudoword::native::{load_prompt_encoder, load_stable_diffusion};
use pseudoword::pipeline::GenerateParams;
use pseudoword::schedulers::SchedulerKind;
use pseudoword::suppress::{
    ItoTarget, MapLayers, SuppressError, SuppressParams, SuppressTxt2Img, capture_maps, ito_step_scale, locate_words,
    soft_weighted_regularization,
};

const PROMPT: &str = "a man without glasses";

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn golden() -> GoldenFile {
    read_golden(&tiny_sd1().join("goldens/suppress_eot.safetensors"))
}

fn tensor<const D: usize>(g: &Golden, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = g.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(g.f.clone(), shape), device)
}

/// Per element `|got - want| <= atol + rtol * |want|`; prints the max abs / rel error.
#[track_caller]
fn assert_rel(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs() - (atol + rtol * w.abs())).fold(f32::NEG_INFINITY, f32::max);
    let rel = got.iter().zip(want).filter(|(_, w)| w.abs() > 1e-6).map(|(g, w)| (g - w).abs() / w.abs()).fold(0.0, f32::max);
    eprintln!("{what}: max abs diff {:.3e}, max rel diff {rel:.3e} (|want| > 1e-6)", max_abs_diff(got, want));
    assert!(worst <= 0.0, "{what}: off by {worst} beyond rtol {rtol} / atol {atol}");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite values");
}

#[test]
fn swr_matches_reference() {
    let device = Device::flex();
    let g = golden();
    let enc = load_prompt_encoder(&tiny_sd1(), None, &device).unwrap();
    let (toks, out) = enc.encode(&[PROMPT], false).unwrap();
    let ids: Vec<i64> = toks[0].input_ids.iter().map(|&i| i as i64).collect();
    assert_eq!(ids, g.get("input_ids").i);
    let tokens = locate_words(&enc.tokenizer, &toks[0], "glasses").unwrap();
    assert_eq!(tokens.n, 6);
    assert_eq!(tokens.target, vec![4]);
    let rows: Vec<i64> = tokens.swr_rows(77).iter().map(|&r| r as i64).collect();
    assert_eq!(rows, g.get("swr_indices").i);
    let c = out.last_hidden_state;
    assert_close("text_embeddings", &f32s(c.clone()), &g.get("text_embeddings").f, 2e-5);

    let swr = pollster::block_on(soft_weighted_regularization(c, &tokens, 1.0)).unwrap();
    assert_close("text_embeddings_swr", &f32s(swr), &g.get("text_embeddings_swr").f, 2e-5);
    // from the golden input exactly: isolates the SVD step
    let swr = pollster::block_on(soft_weighted_regularization(tensor(g.get("text_embeddings"), &device), &tokens, 1.0)).unwrap();
    assert_close("text_embeddings_swr (golden c)", &f32s(swr), &g.get("text_embeddings_swr").f, 2e-5);
}

#[test]
fn words_not_in_prompt_are_a_typed_error() {
    let enc = load_prompt_encoder(&tiny_sd1(), None, &Device::flex()).unwrap();
    let toks = enc.tokenize(PROMPT);
    match locate_words(&enc.tokenizer, &toks, "hat") {
        Err(SuppressError::WordNotInPrompt { word, word_tokens, prompt_tokens }) => {
            assert_eq!(word, "hat");
            assert_eq!(word_tokens, vec!["hat</w>".to_string()]);
            assert_eq!(prompt_tokens.len(), 4, "{prompt_tokens:?}");
        }
        other => panic!("expected WordNotInPrompt, got {other:?}"),
    }
    assert!(matches!(locate_words(&enc.tokenizer, &toks, " , "), Err(SuppressError::NoWords)));
    // two groups, multi-token group
    let toks = enc.tokenize("a man without glasses and a red hat");
    let t = locate_words(&enc.tokenizer, &toks, "glasses, red hat").unwrap();
    assert_eq!(t.target, vec![4, 7, 8]);
    assert_eq!(t.n, 10);
}

fn ito_setup() -> (pseudoword::pipeline::StableDiffusion, GoldenFile, MapLayers, pseudoword::suppress::SuppressTokens) {
    let device = Device::flex();
    let sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let g = golden();
    let layers = MapLayers::for_unet(&sd.unet, [32, 32]).unwrap();
    let toks = sd.prompt.tokenize(PROMPT);
    let tokens = locate_words(&sd.prompt.tokenizer, &toks, "glasses").unwrap();
    (sd, g, layers, tokens)
}

#[test]
fn cross_maps_match_reference() {
    let (sd, g, layers, _) = ito_setup();
    let device = sd.device();
    assert_eq!(layers.size, [32, 32]);
    let p = |s: &str| format!("{s}.transformer_blocks.0");
    let want: Vec<String> = ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2", "down_blocks.0.attentions.0", "down_blocks.0.attentions.1"]
        .iter()
        .map(|s| p(s))
        .collect();
    assert_eq!(layers.cross, want.iter().map(|s| format!("{s}.attn2")).collect::<Vec<_>>());
    assert_eq!(layers.self_attn, want.iter().map(|s| format!("{s}.attn1")).collect::<Vec<_>>());
    assert_eq!(layers.last, "up_blocks.1.attentions.2.transformer_blocks.0.attn2");
    let t = g.get("timestep").i[0] as f64;
    let latent = tensor::<4>(g.get("latent"), &device);
    let a = capture_maps(&sd.unet, &layers, latent.clone(), t, tensor(g.get("text_embeddings"), &device));
    assert_eq!(a.cross.dims(), [1, 32, 32, 77]);
    assert_eq!(a.self_attn.dims(), [1, 32, 32, 1024]);
    assert_close("cross_maps_original", &f32s(a.cross), &g.get("cross_maps_original").f, 2e-6);
    let b = capture_maps(&sd.unet, &layers, latent, t, tensor(g.get("text_embeddings_swr"), &device));
    assert_close("cross_maps_erase_iter0", &f32s(b.cross), &g.get("cross_maps_erase_iter0").f, 1e-5);
}

#[test]
fn masks_loss_gradient_and_updates_match_reference() {
    let (sd, g, layers, tokens) = ito_setup();
    let device = sd.device();
    let t = g.get("timestep").i[0] as f64;
    assert_eq!(t, 781.0);
    let latent = tensor::<4>(g.get("latent"), &device);
    let c = tensor::<3>(g.get("text_embeddings"), &device);
    let target = pollster::block_on(ItoTarget::new(&sd.unet, &layers, &tokens, latent.clone(), t, c)).unwrap();

    // masks: exact
    let masks: Vec<f32> = target.masks[0].iter().map(|&v| v as f32).collect();
    assert_eq!(masks, g.get("masks").f, "masks differ");
    let binary: Vec<i64> = target.masks[0].iter().map(|&v| (v > 0.0) as i64).collect();
    assert_eq!(binary, g.get("mask_binary").i, "mask_binary differs");
    let counts: Vec<usize> = binary.chunks(1024).map(|m| m.iter().filter(|&&v| v == 1).count()).collect();
    assert_eq!(counts, vec![2, 1, 1, 7]);

    // loss, parts, gradient at e = SWR(c)
    let e0 = tensor::<3>(g.get("text_embeddings_swr"), &device);
    let (loss, grad) = target.loss_and_grad(&sd.unet, latent.clone(), t, e0.clone());
    assert_rel("loss_iter0", &f32s(loss.total), &g.get("loss_iter0").f, 1e-4, 0.0);
    assert_rel("loss_parts_iter0", &f32s(loss.parts), &g.get("loss_parts_iter0").f, 1e-4, 1e-8);
    assert_rel("grad_iter0", &f32s(grad.clone()), &g.get("grad_iter0").f, 1e-4, 1e-7);

    let scale = ito_step_scale(20.0, 10, 50);
    assert!((scale - 18.070158058105026).abs() < 1e-12, "step scale {scale}");
    let e1 = e0.clone() - grad * scale;
    assert_close("text_embeddings_after_iter1", &f32s(e1), &g.get("text_embeddings_after_iter1").f, 2e-5);

    let (e, losses) = target.optimize(&sd.unet, latent, t, e0, scale, 10);
    let losses: Vec<f32> = losses.into_iter().flat_map(f32s).collect();
    assert_rel("losses_per_iter", &losses, &g.get("losses_per_iter").f, 1e-4, 0.0);
    assert_close("text_embeddings_after_all_iters", &f32s(e), &g.get("text_embeddings_after_all_iters").f, 2e-5);
}

/// The end-to-end run (50 DDIM steps, SWR from step 10, ITO at steps 10..19) in three segments
/// that run in parallel: steps 0..=10 from the golden start, 11..=20 from the golden latents
/// after step 10, 21..=49 from those after step 20. ITO restarts from SWR(c) at every step
/// and DDIM keeps no history, so the latents are the whole state between segments
/// ([`SuppressTxt2Img::resume_at`]); each segment is checked against the reference's
/// uninterrupted run.
fn end_to_end_segment(from: Option<usize>, to: usize) {
    let device = Device::flex();
    let sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let g = golden();
    let mut p = GenerateParams::new(PROMPT, &sd);
    p.steps = 50;
    p.guidance = 7.5;
    p.scheduler = Some(SchedulerKind::Ddim);
    let s = SuppressParams::new("glasses");
    let latent = tensor::<4>(g.get("latent"), &device);
    let mut run = pollster::block_on(SuppressTxt2Img::new(&sd, &p, &s, Some(latent))).unwrap();
    assert_eq!(run.num_steps(), 50);
    if let Some(k) = from {
        let saved = tensor::<4>(g.get(&format!("full_latents_after_step_{k}")), &device);
        run.resume_at(k + 1, saved).unwrap();
    }
    let erase = g.get("full_erase_embeddings_steps_10_to_19");
    let per = 77 * 32;
    // from the golden start the error accumulates; each later segment starts afresh
    let atol = |k: usize| match k {
        9 | 10 => 3e-4,
        19 => 5e-4,
        20 => 6e-4,
        _ => 2e-3,
    };
    for k in from.map_or(0, |k| k + 1)..=to {
        pollster::block_on(run.step(&sd)).unwrap();
        if (10..20).contains(&k) {
            assert_eq!(run.last_losses().len(), 10, "step {k}");
            let j = k - 10;
            assert_close(&format!("full_erase_embeddings step {k}"), &f32s(run.last_embedding()), &erase.f[j * per..(j + 1) * per], 3e-5);
        } else {
            assert!(run.last_losses().is_empty(), "step {k} ran ITO");
        }
        if [9, 10, 19, 20, 49].contains(&k) {
            assert_close(&format!("full_latents_after_step_{k}"), &f32s(run.latents()), &g.get(&format!("full_latents_after_step_{k}")).f, atol(k));
        }
    }
    assert_eq!(run.is_done(), to == 49);
}

#[test]
fn end_to_end_steps_0_to_10_match_reference() {
    end_to_end_segment(None, 10);
}

#[test]
fn end_to_end_steps_11_to_20_match_reference() {
    end_to_end_segment(Some(10), 20);
}

#[test]
fn end_to_end_steps_21_to_49_match_reference() {
    end_to_end_segment(Some(20), 49);
}

#[test]
fn resume_at_refuses_schedulers_with_history() {
    let device = Device::flex();
    let sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let mut p = GenerateParams::new(PROMPT, &sd);
    (p.steps, p.width, p.height) = (4, 64, 64);
    p.scheduler = Some(SchedulerKind::Pndm);
    let mut run = pollster::block_on(SuppressTxt2Img::new(&sd, &p, &SuppressParams::new("glasses"), None)).unwrap();
    let err = run.resume_at(2, run.latents()).unwrap_err().to_string();
    assert!(err.contains("PNDMScheduler"), "{err}");
    p.scheduler = Some(SchedulerKind::Ddim);
    let mut run = pollster::block_on(SuppressTxt2Img::new(&sd, &p, &SuppressParams::new("glasses"), None)).unwrap();
    assert!(run.resume_at(5, run.latents()).is_err(), "more steps than the run has");
    assert!(run.resume_at(2, run.latents().narrow(0, 0, 1)).is_err(), "wrong shape");
    run.resume_at(3, run.latents()).unwrap();
    pollster::block_on(run.step(&sd)).unwrap();
    assert!(run.is_done());
}

/// Every scheduler, a negative prompt, 2 images and a 2-vector pseudo-word as the negative
/// target: the original branch is plain generation with the same seed, the suppressed branch
/// differs; with ITO off and alpha 0 (SWR is then the identity) both branches agree.
#[test]
fn every_scheduler_pseudo_words_and_batches_work() {
    use pseudoword::native::read_embedding_file;
    use pseudoword::pipeline::Txt2Img;
    let device = Device::flex();
    let mut sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let path = fixtures().join("embeddings/learned_embeds_2vec.safetensors");
    let emb = read_embedding_file(&path, None).unwrap();
    sd.prompt.add_embedding("2vec", &emb).unwrap();
    let mut p = GenerateParams::new("a photo of <chelsea> on a sofa", &sd);
    p.negative_prompt = "blurry".into();
    p.steps = 5;
    p.width = 64;
    p.height = 64;
    p.num_images = 2;
    p.seed = 7;
    let half = |t: Tensor<4>, i: usize| f32s(t.narrow(0, 2 * i, 2));
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::Pndm,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep { karras: true },
        SchedulerKind::Lms,
    ] {
        p.scheduler = Some(kind);
        let mut s = SuppressParams::new("<chelsea>");
        s.opt_iters = 2;
        let mut run = pollster::block_on(SuppressTxt2Img::new(&sd, &p, &s, None)).unwrap();
        assert_eq!(run.tokens().target, vec![4, 5], "{kind}: <chelsea> <chelsea>_1 positions");
        assert_eq!(run.layers().size, [8, 8]);
        let mut plain = Txt2Img::new(&sd, &p, None).unwrap();
        let mut ito_steps = 0;
        while !run.is_done() {
            pollster::block_on(run.step(&sd)).unwrap();
            plain.step(&sd).unwrap();
            ito_steps += usize::from(!run.last_losses().is_empty());
        }
        assert_eq!(ito_steps, 1, "{kind}: ITO runs at step floor(0.2 * 5) = 1 only");
        // batch composition changes float summation order a little (README pipeline tolerance: rtol 5e-5 / atol 5e-3)
        assert_rel(&format!("{kind}: original branch vs plain generation"), &half(run.latents(), 0), &f32s(plain.latents()), 5e-5, 1e-3);
        let d = max_abs_diff(&half(run.latents(), 0), &half(run.latents(), 1));
        eprintln!("{kind}: suppressed vs original max abs diff {d:.3e}");
        assert!(d > 1e-3, "{kind}: suppression changed nothing");

        let mut off = SuppressParams::new("<chelsea>");
        off.optimize = false;
        off.alpha = 0.0;
        let mut run = pollster::block_on(SuppressTxt2Img::new(&sd, &p, &off, None)).unwrap();
        while !run.is_done() {
            pollster::block_on(run.step(&sd)).unwrap();
            assert!(run.last_losses().is_empty());
        }
        assert_close(&format!("{kind}: alpha 0, no ITO: branches agree"), &half(run.latents(), 0), &half(run.latents(), 1), 1e-4);
    }
}

/// The map-resolution rule on an SD 1.x-shaped UNet (4 levels, cross-attention at the first
/// three, narrow channels): 64x64 latents -> 16x16 maps from `down_blocks.2` / `up_blocks.1`,
/// as the reference's `res=16`; odd sizes round up like the stride-2 convolutions.
#[test]
fn map_layers_of_an_sd1_shaped_unet() {
    use pseudoword::models::{UNet2DConditionConfig, UNet2DConditionModel};
    let config = serde_json::json!({
        "sample_size": 64, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 2, "norm_num_groups": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": 2, "cross_attention_dim": 32
    });
    let c = UNet2DConditionConfig::from_json(&config.to_string(), "test").unwrap();
    let (mut map, _) = pseudoword::make_model::random_weights("test", &UNet2DConditionModel::param_specs(&c), &Device::flex(), 3, pseudoword::weights::WeightStorage::F32);
    let unet = UNet2DConditionModel::from_map(&c, &mut map);
    let layers = MapLayers::for_unet(&unet, [64, 64]).unwrap();
    assert_eq!(layers.size, [16, 16]);
    let want: Vec<String> = ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2", "down_blocks.2.attentions.0", "down_blocks.2.attentions.1"]
        .iter()
        .map(|p| format!("{p}.transformer_blocks.0.attn2"))
        .collect();
    assert_eq!(layers.cross, want);
    assert_eq!(layers.last, "up_blocks.1.attentions.2.transformer_blocks.0.attn2");
    assert_eq!(MapLayers::for_unet(&unet, [96, 72]).unwrap().size, [24, 18]);
    assert_eq!(MapLayers::for_unet(&unet, [9, 9]).unwrap().size, [3, 3]);
    // the maps of a real pass at that size: [1, 16, 16, 77] and [1, 16, 16, 256], rows sum to 1
    let sample = Tensor::<4>::random([1, 4, 64, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &Device::flex());
    let ehs = Tensor::<3>::random([1, 77, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &Device::flex());
    let maps = capture_maps(&unet, &layers, sample, 500.0, ehs);
    assert_eq!(maps.cross.dims(), [1, 16, 16, 77]);
    assert_eq!(maps.self_attn.dims(), [1, 16, 16, 256]);
    let sums = f32s(maps.cross.sum_dim(3));
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "cross maps are probabilities over the 77 keys");
}

/// The activation-checkpointed ITO gradient (the default) equals plain autodiff through the UNet
/// up to the last map layer, and the golden `grad_iter0`; also on an SD 1.x-shaped UNet where
/// the map layers sit below other transformer levels.
#[test]
fn checkpointed_ito_gradient_matches_autodiff() {
    let (sd, g, layers, tokens) = ito_setup();
    let device = sd.device();
    let t = g.get("timestep").i[0] as f64;
    let latent = tensor::<4>(g.get("latent"), &device);
    let target = pollster::block_on(ItoTarget::new(&sd.unet, &layers, &tokens, latent.clone(), t, tensor(g.get("text_embeddings"), &device))).unwrap();
    let e0 = tensor::<3>(g.get("text_embeddings_swr"), &device);
    let (l1, g1) = target.loss_and_grad(&sd.unet, latent.clone(), t, e0.clone());
    let (l2, g2) = target.loss_and_grad_autodiff(&sd.unet, latent, t, e0);
    assert_rel("checkpointed loss vs autodiff", &f32s(l1.parts), &f32s(l2.parts), 1e-5, 1e-9);
    let (g1, g2) = (f32s(g1), f32s(g2));
    assert_rel("checkpointed grad vs autodiff", &g1, &g2, 1e-4, 1e-8);
    assert_rel("checkpointed grad vs grad_iter0", &g1, &g.get("grad_iter0").f, 1e-4, 1e-7);

    use pseudoword::models::{UNet2DConditionConfig, UNet2DConditionModel};
    let config = serde_json::json!({
        "sample_size": 16, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 2, "norm_num_groups": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": 2, "cross_attention_dim": 32
    });
    let c = UNet2DConditionConfig::from_json(&config.to_string(), "test").unwrap();
    let (mut map, _) = pseudoword::make_model::random_weights("test", &UNet2DConditionModel::param_specs(&c), &device, 5, pseudoword::weights::WeightStorage::F32);
    let unet = UNet2DConditionModel::from_map(&c, &mut map);
    let layers = MapLayers::for_unet(&unet, [16, 16]).unwrap();
    assert_eq!(layers.size, [4, 4]);
    let mut rng = Rng(0x170_c4e0);
    let sample = Tensor::<4>::from_data(TensorData::new(rng.vec(4 * 16 * 16, 1.0), [1, 4, 16, 16]), &device);
    let c0 = Tensor::<3>::from_data(TensorData::new(rng.vec(77 * 32, 1.0), [1, 77, 32]), &device);
    let e = c0.clone() + Tensor::<3>::from_data(TensorData::new(rng.vec(77 * 32, 0.3), [1, 77, 32]), &device);
    let target = pollster::block_on(ItoTarget::new(&unet, &layers, &tokens, sample.clone(), 500.0, c0)).unwrap();
    let (l1, g1) = target.loss_and_grad(&unet, sample.clone(), 500.0, e.clone());
    let (l2, g2) = target.loss_and_grad_autodiff(&unet, sample, 500.0, e);
    assert_rel("sd1-shaped: loss", &f32s(l1.total), &f32s(l2.total), 1e-5, 1e-9);
    let (g1, g2) = (f32s(g1), f32s(g2));
    let max = g2.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max > 0.0, "gradient is zero");
    assert_close("sd1-shaped: checkpointed grad vs autodiff", &g1, &g2, 1e-4 * max);
}

/// `SuppressParams::checkpoint` only changes how ITO's gradient is computed, not the result.
#[test]
fn checkpointing_off_gives_the_same_run() {
    let device = Device::flex();
    let sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let mut p = GenerateParams::new(PROMPT, &sd);
    (p.steps, p.width, p.height, p.seed) = (5, 64, 64, 9);
    p.scheduler = Some(SchedulerKind::Ddim);
    let run = |checkpoint: bool| {
        let mut s = SuppressParams::new("glasses");
        (s.opt_iters, s.checkpoint) = (3, checkpoint);
        let mut run = pollster::block_on(SuppressTxt2Img::new(&sd, &p, &s, None)).unwrap();
        let mut ito = 0;
        while !run.is_done() {
            pollster::block_on(run.step(&sd)).unwrap();
            ito += run.last_losses().len();
        }
        assert_eq!(ito, 3);
        f32s(run.latents())
    };
    let (a, b) = (run(true), run(false));
    assert_close("checkpointed vs autodiff ITO run", &a, &b, 1e-4);
}
