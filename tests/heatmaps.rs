//! Per-token attention heatmaps (`pseudoword::attention_maps::heatmaps`, `generate --attention-maps`)
//! on the tiny SD1 model: the accumulator reproduces SuppressEOT's golden cross maps with the
//! reference's head choice, the all-heads maps are probabilities, the step average equals an
//! independent recomputation, capturing changes nothing, and the CLI writes one overlay per token.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use pseudoword::pipeline::Denoise;
use pseudoword::models::UNetCapture;
use pseudoword::native::load_stable_diffusion;
use pseudoword::pipeline::{GenerateParams, Txt2Img};
use pseudoword::schedulers::SchedulerKind;
use pseudoword::suppress::{HeatmapAccumulator, Heads, MapLayers, SuppressParams, SuppressTxt2Img, aggregate_maps_heads};

const PROMPT: &str = "a man without glasses";

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn tensor<const D: usize>(g: &Golden, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = g.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(g.f.clone(), shape), device)
}

#[test]
fn accumulator_reproduces_the_golden_cross_maps_and_all_heads_are_probabilities() {
    let device = Device::flex();
    let sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let g = read_golden(&tiny_sd1().join("goldens/suppress_eot.safetensors"));
    let layers = MapLayers::for_unet(&sd.unet, [32, 32]).unwrap();
    let t = g.get("timestep").i[0] as f64;
    let latent = tensor::<4>(g.get("latent"), &device);
    let c = tensor::<3>(g.get("text_embeddings"), &device);
    let prompt = sd.prompt.tokenize(PROMPT);
    let eos = sd.prompt.tokenizer.eos_id();

    // first half of the heads, one step = the reference's A_c at step 10
    let mut half = HeatmapAccumulator::with_heads(layers.clone(), Heads::FirstHalf);
    let mut cap = half.capture();
    sd.unet.forward(latent.clone(), &[t], c.clone(), &mut cap);
    assert!(half.add(&cap, 0..1));
    let hm = pollster::block_on(half.finish(&prompt, eos)).unwrap().unwrap();
    assert_eq!(hm.positions, vec![1, 2, 3, 4]);
    assert_eq!(hm.tokens, vec!["a</w>", "man</w>", "without</w>", "glasses</w>"]);
    assert_eq!(hm.label(3), "glasses");
    assert_eq!((hm.batch, hm.size, hm.steps), (1, [32, 32], 1));
    let golden = &g.get("cross_maps_original").f; // [1, 32, 32, 77]
    for (k, &pos) in hm.positions.iter().enumerate() {
        let want: Vec<f32> = (0..1024).map(|j| golden[j * 77 + pos]).collect();
        assert_close(&format!("token {pos} vs cross_maps_original"), hm.map(0, k), &want, 2e-6);
    }

    // all heads: per pixel the 77 keys sum to 1, the words to less; differs from the half
    let mut all = HeatmapAccumulator::new(layers.clone());
    let mut cap = all.capture();
    sd.unet.forward(latent, &[t], c, &mut cap);
    all.add(&cap, 0..1);
    let mean = all.mean().unwrap();
    assert_eq!(mean.dims(), [1, 32, 32, 77]);
    let sums = f32s(mean.sum_dim(3));
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "all 77 keys sum to 1 per pixel");
    let hm_all = pollster::block_on(all.finish(&prompt, eos)).unwrap().unwrap();
    for j in 0..1024 {
        let words: f32 = (0..4).map(|k| hm_all.map(0, k)[j]).sum();
        assert!((0.0..=1.0 + 1e-6).contains(&words), "pixel {j}: words sum {words}");
    }
    assert!(max_abs_diff(&hm_all.maps, &hm.maps) > 1e-4, "all heads and half the heads should differ");
}

fn params(sd: &pseudoword::pipeline::StableDiffusion) -> GenerateParams {
    let mut p = GenerateParams::new(PROMPT, sd);
    p.steps = 3;
    p.width = 64;
    p.height = 64;
    p.seed = 11;
    p.negative_prompt = "blurry".into();
    p.scheduler = Some(SchedulerKind::Ddim);
    p
}

#[test]
fn txt2img_heatmaps_are_the_step_mean_and_change_nothing() {
    let device = Device::flex();
    let sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let p = params(&sd);
    let mut with = Txt2Img::new(&sd, &p, None).unwrap();
    with.enable_heatmaps(&sd).unwrap();
    let mut plain = Txt2Img::new(&sd, &p, None).unwrap();
    let layers = with.heatmaps().unwrap().layers().clone();
    assert_eq!(layers.size, [8, 8]);
    // independent recomputation of each step's conditional maps from the plain run's latents
    let (_, out) = sd.prompt.encode(&[&p.negative_prompt, &p.prompt], false).unwrap();
    let mut want = vec![0f32; 8 * 8 * 77];
    while !plain.is_done() {
        let i = plain.steps_done();
        let t = plain.scheduler().timesteps()[i];
        let x = plain.scheduler().scale_model_input(Tensor::cat(vec![plain.latents(), plain.latents()], 0), i);
        let mut cap = UNetCapture::attention(layers.cross.clone());
        sd.unet.forward(x, &[t], out.last_hidden_state.clone(), &mut cap);
        let maps = aggregate_maps_heads(&cap.attn.probs, &layers.cross, layers.size, Heads::All).unwrap();
        for (w, v) in want.iter_mut().zip(f32s(maps.narrow(0, 1, 1))) {
            *w += v / 3.0;
        }
        plain.step(&sd).unwrap();
        with.step(&sd).unwrap();
    }
    assert_eq!(f32s(with.latents()), f32s(plain.latents()), "capturing maps changed the generation");
    let acc = with.heatmaps().unwrap();
    assert_eq!(acc.steps(), 3);
    assert_close("step mean vs recomputation", &f32s(acc.mean().unwrap()), &want, 1e-6);
}

#[test]
fn suppressed_run_heatmaps_cover_both_branches_and_change_nothing() {
    let device = Device::flex();
    let sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let mut p = params(&sd);
    p.steps = 5;
    let mut s = SuppressParams::new("glasses");
    s.opt_iters = 1;
    let mut with = pollster::block_on(SuppressTxt2Img::new(&sd, &p, &s, None)).unwrap();
    with.enable_heatmaps();
    let mut plain = pollster::block_on(SuppressTxt2Img::new(&sd, &p, &s, None)).unwrap();
    let mut first_step = None;
    while !with.is_done() {
        pollster::block_on(with.step(&sd)).unwrap();
        pollster::block_on(plain.step(&sd)).unwrap();
        if first_step.is_none() {
            let (o, s) = with.heatmaps().unwrap();
            first_step = Some((f32s(o.mean().unwrap()), f32s(s.mean().unwrap())));
        }
    }
    assert_eq!(f32s(with.latents()), f32s(plain.latents()), "capturing maps changed the suppressed generation");
    let (o0, s0) = first_step.unwrap();
    assert_eq!(o0, s0, "before suppression starts both branches share one pass");
    let (o, s) = with.heatmaps().unwrap();
    assert_eq!((o.steps(), s.steps()), (5, 5));
    let prompt = sd.prompt.tokenize(PROMPT);
    let eos = sd.prompt.tokenizer.eos_id();
    let ho = pollster::block_on(o.finish(&prompt, eos)).unwrap().unwrap();
    let hs = pollster::block_on(s.finish(&prompt, eos)).unwrap().unwrap();
    // the suppressed branch attends less to "glasses" overall
    let total = |h: &pseudoword::suppress::TokenHeatmaps, k: usize| h.map(0, k).iter().sum::<f32>();
    eprintln!("glasses attention: original {:.4}, suppressed {:.4}", total(&ho, 3), total(&hs, 3));
    assert!(max_abs_diff(&ho.maps, &hs.maps) > 1e-4, "branches' maps should differ after suppression");
}

fn pw(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pseudoword")).args(args).output().unwrap();
    assert!(out.status.success(), "command failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn png_size(path: &Path) -> (u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let r = dec.read_info().unwrap();
    (r.info().width, r.info().height)
}

#[test]
fn cli_attention_maps_writes_one_overlay_per_token_and_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let model = tiny_sd1();
    let base = [
        "generate", "--model", model.to_str().unwrap(), "--prompt", PROMPT, "--seed", "3", "--steps", "3", "--width", "64", "--height", "64",
        "--scheduler", "ddim", "--device", "cpu",
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        serde_json::from_slice::<serde_json::Value>(&pw(&a).stdout).unwrap()
    };
    let maps = path("maps");
    let out = run(&["--attention-maps", &maps, "--out", &path("a.png"), "--out-tensor", &path("a.safetensors")]);
    assert_eq!(out["attention_maps"], serde_json::json!(maps));
    run(&["--out", &path("b.png"), "--out-tensor", &path("b.safetensors")]);
    let img = |f: &str| read_golden(Path::new(&path(f))).get("image").f.clone();
    assert_eq!(img("a.safetensors"), img("b.safetensors"), "--attention-maps changed the image");

    let names = ["01-a.png", "02-man.png", "03-without.png", "04-glasses.png"];
    for n in names {
        assert_eq!(png_size(&dir.path().join("maps").join(n)), (64, 64), "{n}");
    }
    assert_eq!(png_size(&dir.path().join("maps/strip.png")), (256, 64));
    let listing: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("maps/maps.json")).unwrap()).unwrap();
    assert_eq!(listing["positions"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(listing["steps"], 3);
    assert_eq!(listing["images"][0]["files"].as_array().unwrap().len(), 4);
    let pngs = std::fs::read_dir(dir.path().join("maps")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png")).count();
    assert_eq!(pngs, 5, "four tokens + strip");

    // with --suppress: original/ and suppressed/
    let sm = path("smaps");
    run(&["--suppress", "glasses", "--suppress-opt-iters", "1", "--attention-maps", &sm, "--out", &path("s.png")]);
    for sub in ["original", "suppressed"] {
        for n in names {
            assert_eq!(png_size(&dir.path().join("smaps").join(sub).join(n)), (64, 64), "{sub}/{n}");
        }
    }
    let listing: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("smaps/maps.json")).unwrap()).unwrap();
    assert_eq!(listing["suppressed"]["tokens"][3], "glasses</w>");
    assert_eq!(listing["original"]["steps"], 3);
}
