//! Real-photo inversion for SuppressEOT (`pseudoword::suppress::inversion`, `real_image`) on the
//! tiny SD1 model and a fixture photo: DDIM inversion round-trips at guidance 1, null-text
//! inversion makes the guided (7.5) reconstruction closer, the edit's original branch is that
//! reconstruction, and the `edit` CLI writes its files with clear errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::{Device, Tensor};
use common::*;
use pseudoword::pipeline::Denoise;
use pseudoword::native::load_stable_diffusion;
use pseudoword::pipeline::{GenerateParams, StableDiffusion, Txt2Img};
use pseudoword::schedulers::SchedulerKind;
use pseudoword::suppress::{
    InversionParams, SuppressParams, SuppressTxt2Img, ddim_invert, ddim_next_step, ddim_scheduler, encode_image, invert_photo, null_text_loss_and_grad, photo_tensor,
};
use pseudoword::photos::prepare_photo;

const PROMPT: &str = "a cat sitting on a sofa";

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn rms(a: &[f32], b: &[f32]) -> f64 {
    (a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

fn photo_path() -> std::path::PathBuf {
    fixtures().join("photos/chelsea_1_center.jpg")
}

fn setup(steps: usize) -> (StableDiffusion, GenerateParams, Tensor<4>) {
    setup_sized(steps, None)
}

/// The tiny model, DDIM, the fixture photo at `size` (default: native 256).
fn setup_sized(steps: usize, size: Option<usize>) -> (StableDiffusion, GenerateParams, Tensor<4>) {
    let device = Device::flex();
    let sd = load_stable_diffusion(&tiny_sd1(), None, &device).unwrap();
    let mut p = GenerateParams::new(PROMPT, &sd);
    p.steps = steps;
    p.scheduler = Some(SchedulerKind::Ddim);
    let size = size.unwrap_or(sd.default_size());
    (p.width, p.height) = (size, size);
    let photo = prepare_photo(&std::fs::read(photo_path()).unwrap(), "chelsea", size as u32).unwrap();
    let pixels = photo_tensor(&photo, &device);
    (sd, p, pixels)
}

/// Plain DDIM sampling from `start` with the negative prompt as uncond.
fn sample(sd: &StableDiffusion, p: &GenerateParams, start: Tensor<4>) -> Vec<f32> {
    let mut run = Txt2Img::new(sd, p, Some(start)).unwrap();
    while !run.is_done() {
        run.step(sd).unwrap();
    }
    f32s(run.latents())
}

/// `ddim_next_step` undoes the scheduler's DDIM step exactly when the noise prediction is the
/// same at both levels (the only approximation of DDIM inversion), for every step.
#[test]
fn ddim_next_step_inverts_the_ddim_step() {
    let (sd, p, _) = setup(10);
    let mut sched = ddim_scheduler(&sd, &p.overrides, p.steps).unwrap();
    let device = Device::flex();
    let x = Tensor::<4>::random([1, 4, 8, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let eps = Tensor::<4>::random([1, 4, 8, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let ts = sched.timesteps().to_vec();
    for (i, &t) in ts.iter().enumerate() {
        let prev = sched.step(eps.clone(), i, x.clone(), None).prev_sample;
        let back = ddim_next_step(sched.as_ref(), eps.clone(), t, prev);
        assert_close(&format!("step {i} (t = {t})"), &f32s(back), &f32s(x.clone()), 2e-5);
    }
}

/// Round trips on the tiny model. Its UNet has random weights, so its noise prediction is not a
/// smooth function of the noise level: DDIM inversion's one approximation (the prediction at
/// x_k stands in for the one at x_{k+1}) costs little near the data and a lot deep into the
/// noise. Measured (50 steps, inverting k levels and sampling them back, latent rms 0.107):
/// k = 1: 2.9e-4, k = 10: 2.8e-2, k = 50: 1.6 (sampling from fresh noise instead: 9.8). The
/// bounds below are about twice those, so a wrong step formula or timestep fails them.
#[test]
fn ddim_inversion_round_trips_at_guidance_one() {
    let steps = 50;
    let (sd, mut p, pixels) = setup(steps);
    p.guidance = 1.0;
    let mut sched = ddim_scheduler(&sd, &p.overrides, p.steps).unwrap();
    let x0 = encode_image(&sd, pixels);
    assert_eq!(x0.dims(), [1, 4, 32, 32]);
    let (_, out) = sd.prompt.encode(&[PROMPT], false).unwrap();
    let c = out.last_hidden_state;
    let latents = ddim_invert(&sd, sched.as_ref(), x0.clone(), c.clone());
    assert_eq!(latents.len(), steps + 1);
    let x0v = f32s(x0);
    let scale = rms(&x0v, &vec![0.0; x0v.len()]);
    let ts = sched.timesteps().to_vec();
    let mut back = |k: usize| {
        let mut x = latents[k].clone();
        for i in steps - k..steps {
            let eps = sd.unet.forward(x.clone(), &[ts[i]], c.clone(), &mut pseudoword::models::UNetCapture::none());
            x = sched.step(eps, i, x, None).prev_sample;
        }
        rms(&f32s(x), &x0v)
    };
    let (e1, e10) = (back(1), back(10));
    // the whole way, through the pipeline
    let full = rms(&sample(&sd, &p, latents[steps].clone()), &x0v);
    let noise = Tensor::<4>::random(latents[steps].dims(), burn::tensor::Distribution::Normal(0.0, 1.0), &latents[0].device());
    let far = rms(&sample(&sd, &p, noise), &x0v);
    eprintln!("DDIM round trip rms error: 1 level {e1:.3e}, 10 levels {e10:.3e}, all {full:.3e}; from noise {far:.3e}; latent rms {scale:.3e}");
    assert!(e1 < 0.01 * scale, "one level: {e1}");
    assert!(e10 < 0.5 * scale, "ten levels: {e10}");
    assert!(full < 0.35 * far, "all levels {full} vs from noise {far}");
}

#[test]
fn null_text_inversion_improves_the_guided_reconstruction() {
    // 64x64 (8x8 latents) keeps the 100 forward/backward passes quick
    let (sd, p, pixels) = setup_sized(10, Some(64));
    let inv = InversionParams::default();
    let mut calls = 0;
    let inverted = pollster::block_on(invert_photo(&sd, pixels, &p, &inv, &mut |_, _| {
        calls += 1;
        true
    }))
    .unwrap();
    assert_eq!(calls, 10);
    assert_eq!(inverted.null_text.uncond.len(), 10);
    let x0 = f32s(inverted.latents[0].clone());
    let xt = inverted.latents.last().unwrap().clone();
    // no optimisation: CFG 7.5 with the plain "" embedding from the inverted latent
    let plain = rms(&sample(&sd, &p, xt), &x0);
    // optimised: the original branch of the edit run
    let s = SuppressParams::for_real_image("sofa");
    assert_eq!(s.opt_scale, 5.0);
    let mut run = pollster::block_on(SuppressTxt2Img::from_inverted(&sd, &p, &s, &inverted)).unwrap();
    while !run.is_done() {
        pollster::block_on(run.step(&sd)).unwrap();
    }
    let rec = f32s(run.latents().narrow(0, 0, 1));
    let edited = f32s(run.latents().narrow(0, 1, 1));
    let opt = rms(&rec, &x0);
    eprintln!(
        "guided reconstruction rms error: plain uncond {plain:.3e}, null-text {opt:.3e}; iterations {:?}; losses {:?}; edit vs reconstruction {:.3e}",
        inverted.null_text.iterations,
        inverted.null_text.losses,
        rms(&edited, &rec)
    );
    // measured on the tiny random-weight model (10 steps, 64x64): 5.61 -> 2.73 (at 256x256: 5.64 -> 3.46)
    assert!(opt < 0.7 * plain, "null-text inversion should reduce the error ({opt} vs {plain})");
    assert!(inverted.null_text.iterations.iter().all(|&k| (1..=10).contains(&k)));
    assert!(rms(&edited, &rec) > 1e-4, "suppression changed nothing");
}


/// With no Adam iterations the per-step embeddings are the negative prompt's: the edit's original
/// branch is then plain guided DDIM sampling from the inverted latent.
#[test]
fn zero_null_text_iterations_reproduce_plain_guided_sampling() {
    let (sd, p, pixels) = setup_sized(4, Some(64));
    let inv = InversionParams { null_text_iters: 0, ..InversionParams::default() };
    let inverted = pollster::block_on(invert_photo(&sd, pixels, &p, &inv, &mut |_, _| true)).unwrap();
    assert_eq!(inverted.null_text.iterations, vec![0; 4]);
    let plain = sample(&sd, &p, inverted.latents[4].clone());
    let mut run = pollster::block_on(SuppressTxt2Img::from_inverted(&sd, &p, &SuppressParams::for_real_image("sofa"), &inverted)).unwrap();
    while !run.is_done() {
        pollster::block_on(run.step(&sd)).unwrap();
    }
    assert_close("original branch vs plain sampling", &f32s(run.latents().narrow(0, 0, 1)), &plain, 1e-3);
}

fn pw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pseudoword")).args(args).output().unwrap()
}

#[test]
fn cli_edit_writes_the_edit_and_the_reconstruction_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let model = tiny_sd1();
    let photo = photo_path();
    let edit = |image: &str, words: &[&str], out: &str, extra: &[&str]| {
        let mut a = vec!["edit", "--model", model.to_str().unwrap(), "--image", image, "--prompt", PROMPT, "--steps", "5", "--null-text-iters", "2", "--device", "cpu", "--out", out];
        a.extend_from_slice(words);
        a.extend_from_slice(extra);
        pw(&a)
    };
    let (png, t) = (path("cat.png"), path("cat.safetensors"));
    let maps = path("maps");
    let out = edit(photo.to_str().unwrap(), &["--suppress", "sofa"], &png, &["--out-tensor", &t, "--attention-maps", &maps]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rec = path("cat-reconstruction.png");
    assert_eq!(json["reconstruction"], serde_json::json!(rec));
    assert_eq!(json["target_positions"], serde_json::json!([6]));
    assert_eq!(json["null_text_iterations"].as_array().unwrap().len(), 5);
    for f in [&png, &rec] {
        let bytes = std::fs::read(f).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (256, 256), "{f}");
        let text = pseudoword::pipeline::png_out::read_parameters(&bytes).unwrap();
        assert!(text.contains("Sampler: DDIM"), "{text}");
    }
    let text = pseudoword::pipeline::png_out::read_parameters(&std::fs::read(&png).unwrap()).unwrap();
    assert!(text.contains("SuppressEOT: \"sofa\"") && text.contains("scale 5") && text.contains("Null-text inversion"), "{text}");
    for sub in ["original", "suppressed"] {
        for f in ["01-a.png", "02-cat.png", "05-a.png", "06-sofa.png", "strip.png"] {
            let img = image::open(dir.path().join("maps").join(sub).join(f)).unwrap();
            assert_eq!(img.height(), 256, "{sub}/{f}");
        }
    }
    let listing: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("maps/maps.json")).unwrap()).unwrap();
    assert_eq!(listing["suppressed"]["positions"], serde_json::json!([1, 2, 3, 4, 5, 6]));
    let g = read_golden(Path::new(&t));
    assert_eq!(g.get("latents").shape, vec![2, 4, 32, 32]);
    assert!(max_abs_diff(&g.get("image").f, &g.get("reconstruction").f) > 1e-3, "the edit changed nothing");

    let err = |o: &Output| {
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!e.contains("panicked"), "{e}");
        e
    };
    let e = err(&edit(photo.to_str().unwrap(), &["--suppress", "hat"], &path("x.png"), &[]));
    assert!(e.contains("`hat`") && e.contains("not in the prompt"), "{e}");
    let bad = path("notes.jpg");
    std::fs::write(&bad, "not an image").unwrap();
    let e = err(&edit(&bad, &["--suppress", "sofa"], &path("x.png"), &[]));
    assert!(e.contains("notes.jpg") && e.contains("JPEG, PNG or WebP"), "{e}");
    let e = err(&edit(&path("missing.jpg"), &["--suppress", "sofa"], &path("x.png"), &[]));
    assert!(e.contains("cannot read the photo") && e.contains("missing.jpg"), "{e}");
    let e = err(&edit(photo.to_str().unwrap(), &[], &path("x.png"), &[]));
    assert!(e.contains("--suppress WORDS"), "{e}");
    let e = err(&edit(photo.to_str().unwrap(), &["--suppress", "sofa"], &path("x.png"), &["--guidance", "1"]));
    assert!(e.contains("guidance"), "{e}");
    assert!(!Path::new(&path("x.png")).exists());
}

/// The checkpointed null-text gradient equals plain autodiff through the whole UNet.
#[test]
fn null_text_gradient_matches_plain_autodiff() {
    let (sd, p, pixels) = setup_sized(10, Some(64));
    let mut sched = ddim_scheduler(&sd, &p.overrides, p.steps).unwrap();
    let (_, out) = sd.prompt.encode(&[&p.negative_prompt, &p.prompt], false).unwrap();
    let u = out.last_hidden_state.clone().narrow(0, 0, 1);
    let c = out.last_hidden_state.narrow(0, 1, 1);
    let latents = ddim_invert(&sd, sched.as_ref(), encode_image(&sd, pixels), c.clone());
    let step = 3;
    let t = sched.timesteps()[step];
    let (latent, target) = (latents[10 - step].clone(), latents[9 - step].clone());
    let none = || pseudoword::models::UNetCapture::none();
    let eps_c = sd.unet.forward(latent.clone(), &[t], c, &mut none());
    let (loss, grad) = null_text_loss_and_grad(&sd, sched.as_mut(), step, latent.clone(), target.clone(), eps_c.clone(), u.clone(), p.guidance);
    // plain autodiff
    let ua = u.clone().autodiff().require_grad();
    let eps_u = sd.unet.forward(latent.clone().autodiff(), &[t], ua.clone(), &mut none());
    let eps = eps_u.clone() + (eps_c.autodiff() - eps_u) * p.guidance;
    let rec = sched.step(eps, step, latent.autodiff(), None).prev_sample;
    let d = rec - target.autodiff();
    let want_loss = (d.clone() * d).mean();
    let grads = want_loss.backward();
    let want_loss = f32s(want_loss.inner());
    let want = f32s(ua.grad(&grads).unwrap());
    let got = f32s(grad);
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("null-text grad: max |grad| {max:.3e}, max diff {:.3e}", max_abs_diff(&got, &want));
    assert!(max > 0.0);
    assert_close("loss", &f32s(loss), &want_loss, 1e-6 * want_loss[0].abs().max(1.0));
    assert_close("checkpointed vs plain gradient", &got, &want, 1e-4 * max);
}
