//! Scheduler parity with diffusers 0.42 (goldens in tests/fixtures/tiny-sd1/goldens/schedulers.*,
//! see /work/shared/fixtures/README.md "Schedulers"), on the CPU backend: timesteps, sigmas,
//! init_noise_sigma, model-input scales, resolved configs, full trajectories (n=20) and the first
//! steps (n=50) of DDIM, PNDM, Euler, Euler ancestral, DPM++ 2M and LMS, add_noise, and the
//! float32 betas / alphas_cumprod. Plus unit tests of the spacings, v-prediction, Karras sigmas,
//! zero-terminal-SNR rescaling and config resolution against values derived from diffusers'
//! formulas (the goldens only cover the SD1 defaults).

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use pseudoword::schedulers::*;
use serde_json::Value;

/// README "Tolerances": scheduler steps, rtol 1e-5 or atol 4e-4.
const RTOL: f64 = 1e-5;
const ATOL: f64 = 4e-4;

const DPM: SchedulerKind = SchedulerKind::DpmSolverMultistep { karras: false };

fn device() -> Device {
    Device::flex()
}

fn f32s(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn goldens() -> GoldenFile {
    read_golden(&tiny_sd1().join("goldens/schedulers.safetensors"))
}

fn golden_json() -> Value {
    let text = std::fs::read_to_string(tiny_sd1().join("goldens/schedulers.json")).unwrap();
    // Python's json writes `-Infinity` (DPM's lambda_min_clipped); our config serializes it as null
    serde_json::from_str(&text.replace("-Infinity", "null")).unwrap()
}

fn file_config() -> SchedulerConfig {
    let path = tiny_sd1().join("scheduler/scheduler_config.json");
    SchedulerConfig::from_json(&std::fs::read_to_string(&path).unwrap(), &path.display().to_string()).unwrap()
}

fn kind_of(golden_name: &str) -> SchedulerKind {
    match golden_name {
        "ddim" => SchedulerKind::Ddim,
        "pndm" => SchedulerKind::Pndm,
        "euler" => SchedulerKind::Euler,
        "euler_ancestral" => SchedulerKind::EulerAncestral,
        "dpmpp_2m" => DPM,
        "lms" => SchedulerKind::Lms,
        other => panic!("unknown golden scheduler {other}"),
    }
}

/// Row `k` of a golden stacked along dim 0, as a `[1, 4, 8, 8]` tensor (or the whole golden
/// when it already has rank 4 and `k` is `None`).
fn row(g: &Golden, k: Option<usize>) -> Tensor<4> {
    let (shape, data): (Vec<usize>, Vec<f32>) = match k {
        None => (g.shape.clone(), g.f.clone()),
        Some(k) => {
            let n: usize = g.shape[1..].iter().product();
            (g.shape[1..].to_vec(), g.f[k * n..(k + 1) * n].to_vec())
        }
    };
    let shape: [usize; 4] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(data, shape), &device())
}

fn host(data: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
    Tensor::from_data(TensorData::new(data, shape), &device())
}

/// Max |got - want| after asserting `|got - want| <= atol + rtol |want|` elementwise.
#[track_caller]
fn check_close(what: &str, got: &[f32], want: &[f32], rtol: f64, atol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut max = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        let d = (g - w).abs();
        assert!(d <= atol + rtol * w.abs(), "{what}[{i}]: got {g}, want {w} (diff {d:.3e})");
        max = max.max(d);
    }
    max
}

#[track_caller]
fn assert_rel(what: &str, got: f64, want: f64, rel: f64) {
    assert!((got - want).abs() <= rel * want.abs().max(1e-30), "{what}: got {got}, want {want}");
}

/// The golden `resolved_config` holds every key of our resolved config with the same value.
fn check_resolved_config(name: &str, cfg: &ResolvedConfig, entry: &Value) {
    assert_eq!(cfg.class_name, entry["class"].as_str().unwrap(), "{name}: class");
    let ours = serde_json::to_value(cfg).unwrap();
    let golden = &entry["resolved_config"];
    for (key, value) in ours.as_object().unwrap() {
        if key == "_class_name" || key == "eta" {
            continue;
        }
        let want = golden.get(key).unwrap_or_else(|| panic!("{name}: golden resolved_config lacks `{key}`"));
        match (value.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => assert_rel(&format!("{name}.{key}"), a, b, 1e-12),
            _ => assert_eq!(value, want, "{name}: resolved config `{key}`"),
        }
    }
    // the golden overrides are what the kind resolves to anyway
    for (key, value) in entry["overrides"].as_object().unwrap() {
        assert_eq!(&ours[key], value, "{name}: override `{key}`");
    }
}

/// Everything stored for one golden scheduler; returns the max abs error over the trajectories.
fn run_golden(name: &str) -> f64 {
    let g = goldens();
    let json = golden_json();
    let entry = &json["schedulers"][name];
    let mut s = create(kind_of(name), &file_config(), &Overrides::default()).unwrap();
    check_resolved_config(name, s.config(), entry);
    assert_eq!(s.name(), entry["class"].as_str().unwrap());

    let model_outputs = g.get("model_outputs");
    let sample_unscaled = g.get("sample_unscaled");
    let mut max_err = 0.0f64;
    for n in json["steps"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize) {
        let e = &entry[format!("n{n}")];
        s.set_timesteps(n).unwrap();

        // timesteps: integers exact, float32 schedules to 1e-4
        let want: Vec<f64> = e["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(s.timesteps().len(), want.len(), "{name} n={n}: number of timesteps");
        let int = e["timesteps_dtype"] == "torch.int64";
        for (i, (&a, &b)) in s.timesteps().iter().zip(&want).enumerate() {
            if int {
                assert_eq!(a, b, "{name} n={n}: timestep {i}");
            } else {
                assert!((a - b).abs() <= 1e-4, "{name} n={n}: timestep {i}: {a} vs {b}");
            }
        }
        // sigmas (float32 values)
        match e.get("sigmas") {
            Some(sig) => {
                let got = s.sigmas().expect("sigma scheduler");
                let want: Vec<f64> = sig.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                assert_eq!(got.len(), want.len(), "{name} n={n}: number of sigmas");
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-12, "{name} n={n}: sigma {i}: {a} vs {b}");
                }
            }
            None => assert!(s.sigmas().is_none(), "{name}: no sigmas expected"),
        }
        assert_rel(&format!("{name} n={n} init_noise_sigma"), s.init_noise_sigma(), e["init_noise_sigma"].as_f64().unwrap(), 1e-6);
        let scales = e["scale_model_input_factor_per_timestep"].as_array().unwrap();
        assert_eq!(scales.len(), s.timesteps().len());
        for (i, v) in scales.iter().enumerate() {
            assert_rel(&format!("{name} n={n} scale {i}"), s.model_input_scale(i), v.as_f64().unwrap(), 1e-6);
        }

        // trajectory: sample_0 = sample_unscaled * init_noise_sigma, then step(model_outputs[k], k, sample_k)
        let steps = e["num_steps_run"].as_u64().unwrap() as usize;
        let samples = g.get(&format!("{name}_n{n}_samples"));
        let pred_original = g.tensors.get(&format!("{name}_n{n}_pred_original"));
        let mut sample = row(sample_unscaled, None).mul_scalar(s.init_noise_sigma());
        for k in 0..steps {
            // scale_model_input multiplies by the stored factor
            let scaled = f32s(s.scale_model_input(sample.clone(), k));
            let unscaled = f32s(sample.clone());
            let factor = s.model_input_scale(k);
            let want_scaled: Vec<f32> = unscaled.iter().map(|&x| (x as f64 * factor) as f32).collect();
            check_close(&format!("{name} n={n} scale_model_input {k}"), &scaled, &want_scaled, 1e-6, 1e-6);

            let noise = s.needs_noise().then(|| row(g.get("ancestral_noise"), Some(k)));
            let out = s.step(row(model_outputs, Some(k)), k, sample, noise);
            let got = f32s(out.prev_sample.clone());
            let want = &samples.f[k * got.len()..(k + 1) * got.len()];
            let err = check_close(&format!("{name} n={n} step {k} prev_sample"), &got, want, RTOL, ATOL);
            max_err = max_err.max(err);
            match (pred_original, out.pred_original_sample) {
                (Some(po), Some(x0)) => {
                    let got = f32s(x0);
                    let want = &po.f[k * got.len()..(k + 1) * got.len()];
                    let err = check_close(&format!("{name} n={n} step {k} pred_original"), &got, want, RTOL, ATOL);
                    max_err = max_err.max(err);
                }
                (Some(_), None) => panic!("{name}: step returned no pred_original_sample"),
                _ => {}
            }
            sample = out.prev_sample;
        }
    }
    eprintln!("{name}: max abs error over trajectories {max_err:.3e}");
    max_err
}

#[test]
fn ddim_matches_diffusers() {
    run_golden("ddim");
}

#[test]
fn pndm_matches_diffusers() {
    run_golden("pndm");
}

#[test]
fn euler_matches_diffusers() {
    run_golden("euler");
}

#[test]
fn euler_ancestral_matches_diffusers() {
    run_golden("euler_ancestral");
}

#[test]
fn dpmpp_2m_matches_diffusers() {
    run_golden("dpmpp_2m");
}

#[test]
fn lms_matches_diffusers() {
    run_golden("lms");
}

#[test]
fn betas_and_alphas_cumprod_are_float32_exact() {
    let g = goldens();
    let (betas, acp) = (&g.get("betas").f, &g.get("alphas_cumprod").f);
    for name in ["ddim", "pndm", "euler", "euler_ancestral", "dpmpp_2m", "lms"] {
        let s = create(kind_of(name), &file_config(), &Overrides::default()).unwrap();
        let b: Vec<f32> = s.betas().iter().map(|&x| x as f32).collect();
        let a: Vec<f32> = s.alphas_cumprod().iter().map(|&x| x as f32).collect();
        assert_eq!(&b, betas, "{name}: betas");
        assert_eq!(&a, acp, "{name}: alphas_cumprod");
        // the f64 tables hold float32 values exactly
        assert!(s.alphas_cumprod().iter().all(|&x| x == x as f32 as f64));
    }
}

#[test]
fn add_noise_ddpm_and_velocity_match_diffusers() {
    let g = goldens();
    let x = row(g.get("add_noise_original"), None);
    let noise = row(g.get("add_noise_noise"), None);
    let ts: Vec<usize> = g.get("add_noise_ddpm_timesteps").i.iter().map(|&t| t as usize).collect();
    let ddim = create(SchedulerKind::Ddim, &file_config(), &Overrides::default()).unwrap();
    let acp = ddim.alphas_cumprod();
    for (k, &t) in ts.iter().enumerate() {
        let want = row(g.get("add_noise_ddpm"), Some(k));
        let got = add_noise_ddpm(acp, x.clone(), noise.clone(), &[t]);
        let err = check_close(&format!("add_noise_ddpm t={t}"), &f32s(got), &f32s(want.clone()), 0.0, 1e-5);
        eprintln!("add_noise_ddpm t={t}: {err:.2e}");
        // the schedulers' own add_noise for DDIM / PNDM / DPM is the DDPM one
        for kind in [SchedulerKind::Ddim, SchedulerKind::Pndm, DPM] {
            let mut s = create(kind, &file_config(), &Overrides::default()).unwrap();
            s.set_timesteps(20).unwrap();
            let got = s.add_noise(x.clone(), noise.clone(), t as f64);
            check_close(&format!("{kind} add_noise t={t}"), &f32s(got), &f32s(want.clone()), 0.0, 1e-5);
        }
        let want = row(g.get("velocity_ddpm"), Some(k));
        let got = velocity(acp, x.clone(), noise.clone(), &[t]);
        check_close(&format!("velocity t={t}"), &f32s(got), &f32s(want), 0.0, 1e-5);
    }
    // per-row timesteps over a batch give every row at once
    let b = ts.len();
    let xb = Tensor::cat(vec![x.clone(); b], 0);
    let nb = Tensor::cat(vec![noise.clone(); b], 0);
    let got = add_noise_ddpm(acp, xb.clone(), nb.clone(), &ts);
    check_close("add_noise_ddpm batch", &f32s(got), &g.get("add_noise_ddpm").f, 0.0, 1e-5);
    let got = velocity(acp, xb, nb, &ts);
    check_close("velocity batch", &f32s(got), &g.get("velocity_ddpm").f, 0.0, 1e-5);
}

#[test]
fn add_noise_euler_matches_diffusers() {
    let g = goldens();
    let x = row(g.get("add_noise_original"), None);
    let noise = row(g.get("add_noise_noise"), None);
    for kind in [SchedulerKind::Euler, SchedulerKind::EulerAncestral, SchedulerKind::Lms] {
        let mut s = create(kind, &file_config(), &Overrides::default()).unwrap();
        s.set_timesteps(20).unwrap();
        for (k, &t) in g.get("add_noise_euler_timesteps").f.iter().enumerate() {
            let got = s.add_noise(x.clone(), noise.clone(), t as f64);
            let want = row(g.get("add_noise_euler"), Some(k));
            let err = check_close(&format!("{kind} add_noise t={t}"), &f32s(got), &f32s(want), 1e-6, 1e-5);
            eprintln!("{kind} add_noise t={t}: {err:.2e}");
        }
    }
}

// ---------- unit tests against diffusers' formulas (no goldens for these settings) ----------

fn with(kind: SchedulerKind, o: Overrides) -> Box<dyn Scheduler> {
    create(kind, &file_config(), &o).unwrap()
}

fn timesteps(kind: SchedulerKind, o: Overrides, n: usize) -> Vec<f64> {
    let mut s = with(kind, o);
    s.set_timesteps(n).unwrap();
    s.timesteps().to_vec()
}

fn spacing(t: TimestepSpacing) -> Overrides {
    Overrides { timestep_spacing: Some(t), ..Default::default() }
}

#[test]
fn trailing_spacing() {
    // np.round(np.arange(1000, 0, -250)) - 1
    let kinds = [SchedulerKind::Ddim, SchedulerKind::Euler, SchedulerKind::EulerAncestral, SchedulerKind::Lms, DPM];
    for kind in kinds {
        assert_eq!(timesteps(kind, spacing(TimestepSpacing::Trailing), 4), [999.0, 749.0, 499.0, 249.0], "{kind}");
    }
    // 1000/3 = 333.33: round(1000 - k * 333.33) - 1
    assert_eq!(timesteps(SchedulerKind::Ddim, spacing(TimestepSpacing::Trailing), 3), [999.0, 666.0, 332.0]);
    // 1000/16 = 62.5: round half to even (937.5 -> 938, 812.5 -> 812)
    let t16 = timesteps(SchedulerKind::Ddim, spacing(TimestepSpacing::Trailing), 16);
    assert_eq!(&t16[..3], [999.0, 937.0, 874.0]);
    assert_eq!(t16[3], 811.0);
    // numpy's arange overshoots for n = 61; diffusers would append a -1 timestep, we keep 61
    let t61 = timesteps(SchedulerKind::Ddim, spacing(TimestepSpacing::Trailing), 61);
    assert_eq!(t61.len(), 61);
    assert!(t61.iter().all(|&t| t >= 0.0));
    // PNDM: ascending then PLMS-reversed with the repeated entry
    assert_eq!(timesteps(SchedulerKind::Pndm, spacing(TimestepSpacing::Trailing), 4), [999.0, 749.0, 749.0, 499.0, 249.0]);
    // Euler trailing: init_noise_sigma is the largest sigma itself
    let mut s = with(SchedulerKind::Euler, spacing(TimestepSpacing::Trailing));
    s.set_timesteps(4).unwrap();
    assert_eq!(s.init_noise_sigma(), s.sigmas().unwrap()[0]);
    assert_rel("sigma(999)", s.sigmas().unwrap()[0], 14.614646911621094, 1e-7);
}

#[test]
fn leading_spacing() {
    let want: Vec<f64> = (0..10).rev().map(|i| (i * 100 + 1) as f64).collect();
    assert_eq!(timesteps(SchedulerKind::Ddim, Overrides::default(), 10), want); // file: steps_offset 1
    assert_eq!(want[0], 901.0);
    let no_offset = Overrides { steps_offset: Some(0), ..Default::default() };
    assert_eq!(timesteps(SchedulerKind::Ddim, no_offset, 10)[9], 0.0);
    // PNDM (PLMS): n steps give n + 1 timesteps, the second repeated
    let p = timesteps(SchedulerKind::Pndm, Overrides::default(), 10);
    assert_eq!(p.len(), 11);
    assert_eq!(&p[..4], [901.0, 801.0, 801.0, 701.0]);
    assert_eq!(p[10], 1.0);
    // Euler leading: float timesteps 751, 501, 251, 1 and init_noise_sigma = sqrt(max^2 + 1)
    let mut s = with(SchedulerKind::Euler, spacing(TimestepSpacing::Leading));
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps(), [751.0, 501.0, 251.0, 1.0]);
    let max = s.sigmas().unwrap()[0];
    assert_rel("euler leading init_noise_sigma", s.init_noise_sigma(), (max * max + 1.0).sqrt(), 1e-6);
    // DPM leading: ratio = 1000 // (n + 1), arange(0, n + 1) * ratio reversed without 0, + offset
    assert_eq!(timesteps(DPM, spacing(TimestepSpacing::Leading), 4), [801.0, 601.0, 401.0, 201.0]);
}

#[test]
fn linspace_spacing() {
    // np.linspace(0, 999, 10).round()[::-1]
    let want = [999.0, 888.0, 777.0, 666.0, 555.0, 444.0, 333.0, 222.0, 111.0, 0.0];
    assert_eq!(timesteps(SchedulerKind::Ddim, spacing(TimestepSpacing::Linspace), 10), want);
    let mut p = timesteps(SchedulerKind::Pndm, spacing(TimestepSpacing::Linspace), 10);
    p.remove(1);
    assert_eq!(p, want);
    // Euler keeps the float32 values: 999, 665.99..., 333, 0
    let e = timesteps(SchedulerKind::Euler, Overrides::default(), 4);
    assert_eq!(e, [999.0, 666.0, 333.0, 0.0]);
    let e = timesteps(SchedulerKind::Euler, Overrides::default(), 7);
    assert_eq!(e[1], (999.0f64 / 6.0 * 5.0) as f32 as f64);
    // DPM: np.linspace(0, 999, n + 1).round()[::-1][:-1]; 499.5 rounds to even 500
    assert_eq!(timesteps(DPM, Overrides::default(), 4), [999.0, 749.0, 500.0, 250.0]);
}

fn rng_tensor(seed: u64, scale: f32) -> (Vec<f32>, Tensor<4>) {
    let v = Rng(seed).vec(2 * 4 * 4 * 4, scale);
    (v.clone(), host(v, [2, 4, 4, 4]))
}

fn vpred() -> Overrides {
    Overrides { prediction_type: Some(PredictionType::VPrediction), ..Default::default() }
}

#[test]
fn ddim_v_prediction_step() {
    let mut s = with(SchedulerKind::Ddim, Overrides { timestep_spacing: Some(TimestepSpacing::Trailing), ..vpred() });
    s.set_timesteps(4).unwrap();
    let (x, xt) = rng_tensor(1, 1.0);
    let (v, vt) = rng_tensor(2, 1.0);
    let acp = s.alphas_cumprod().to_vec();
    // step 1: t = 749, prev = 749 - 1000 // 4 = 499
    let (a, ap) = (acp[749], acp[499]);
    let out = s.step(vt, 1, xt, None);
    let (mut want, mut want_x0) = (vec![], vec![]);
    for (&x, &v) in x.iter().zip(&v) {
        let (x, v) = (x as f64, v as f64);
        let x0 = a.sqrt() * x - (1.0 - a).sqrt() * v;
        let eps = a.sqrt() * v + (1.0 - a).sqrt() * x;
        want.push((ap.sqrt() * x0 + (1.0 - ap).sqrt() * eps) as f32);
        want_x0.push(x0.clamp(-1.0, 1.0) as f32);
    }
    let x0 = f32s(out.pred_original_sample.unwrap());
    // the SD1 file sets clip_sample false, so x0 is unclipped
    let unclipped: Vec<f32> = x.iter().zip(&v).map(|(&x, &v)| (a.sqrt() * x as f64 - (1.0 - a).sqrt() * v as f64) as f32).collect();
    check_close("ddim v x0", &x0, &unclipped, 1e-6, 1e-6);
    check_close("ddim v prev", &f32s(out.prev_sample), &want, 1e-6, 1e-6);
    // with clip_sample the x0 is clamped to [-1, 1] and the direction still uses the raw eps
    let mut s = with(SchedulerKind::Ddim, Overrides { clip_sample: Some(true), timestep_spacing: Some(TimestepSpacing::Trailing), ..vpred() });
    s.set_timesteps(4).unwrap();
    let (_, xt) = rng_tensor(1, 1.0);
    let (_, vt) = rng_tensor(2, 1.0);
    let out = s.step(vt, 1, xt, None);
    check_close("ddim v clipped x0", &f32s(out.pred_original_sample.unwrap()), &want_x0, 1e-6, 1e-6);
}

#[test]
fn euler_and_lms_v_prediction_first_step() {
    for kind in [SchedulerKind::Euler, SchedulerKind::Lms, SchedulerKind::EulerAncestral] {
        let mut s = with(kind, vpred());
        s.set_timesteps(10).unwrap();
        let sig = s.sigmas().unwrap().to_vec();
        let (x, xt) = rng_tensor(3, 10.0);
        let (v, vt) = rng_tensor(4, 1.0);
        let noise = s.needs_noise().then(|| host(vec![0.0; x.len()], [2, 4, 4, 4]));
        let out = s.step(vt, 0, xt, noise);
        let (s0, s1) = (sig[0], sig[1]);
        // for Euler ancestral with zero noise the step goes to sigma_down instead of sigma_1
        let target = if kind == SchedulerKind::EulerAncestral {
            let up = (s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0)).sqrt();
            (s1 * s1 - up * up).sqrt()
        } else {
            s1
        };
        let (mut want, mut want_x0) = (vec![], vec![]);
        for (&x, &v) in x.iter().zip(&v) {
            let (x, v) = (x as f64, v as f64);
            let x0 = v * (-s0 / (s0 * s0 + 1.0).sqrt()) + x / (s0 * s0 + 1.0);
            want_x0.push(x0 as f32);
            // first LMS step has order 1: coefficient = integral of 1 = sigma_1 - sigma_0 (an Euler step)
            want.push((x + (x - x0) / s0 * (target - s0)) as f32);
        }
        check_close(&format!("{kind} v x0"), &f32s(out.pred_original_sample.unwrap()), &want_x0, 1e-5, 1e-5);
        check_close(&format!("{kind} v prev"), &f32s(out.prev_sample), &want, 1e-5, 1e-4);
    }
}

#[test]
fn dpm_v_prediction_first_and_second_order() {
    let mut s = with(DPM, vpred());
    s.set_timesteps(10).unwrap();
    let sig = s.sigmas().unwrap().to_vec();
    let als = |sigma: f64| {
        let a = 1.0 / (sigma * sigma + 1.0).sqrt();
        (a, sigma * a, (a).ln() - (sigma * a).ln())
    };
    let (x, xt) = rng_tensor(5, 1.0);
    let (v, vt) = rng_tensor(6, 1.0);
    let out = s.step(vt.clone(), 0, xt, None);
    let (a0, s0, l0) = als(sig[0]);
    let (a1, s1, l1) = als(sig[1]);
    let h = l1 - l0;
    let x0: Vec<f64> = x.iter().zip(&v).map(|(&x, &v)| a0 * x as f64 - s0 * v as f64).collect();
    let x1: Vec<f64> = x.iter().zip(&x0).map(|(&x, &m)| s1 / s0 * x as f64 - a1 * ((-h).exp() - 1.0) * m).collect();
    check_close("dpm v first order", &f32s(out.prev_sample.clone()), &x1.iter().map(|&y| y as f32).collect::<Vec<_>>(), 1e-5, 1e-5);
    // second step: 2nd-order midpoint with D1 = (m0 - m1) / r0
    let out2 = s.step(vt, 1, out.prev_sample, None);
    let (a2, s2, l2) = als(sig[2]);
    let (h2, h0) = (l2 - l1, l1 - l0);
    let r0 = h0 / h2;
    let c = a2 * ((-h2).exp() - 1.0);
    let want: Vec<f32> = (0..x.len())
        .map(|i| {
            let m1 = a1 * x1[i] - s1 * v[i] as f64;
            let d1 = (m1 - x0[i]) / r0;
            (s2 / s1 * x1[i] - c * m1 - 0.5 * c * d1) as f32
        })
        .collect();
    check_close("dpm v second order", &f32s(out2.prev_sample), &want, 1e-5, 1e-5);
}

#[test]
fn karras_sigmas() {
    let rho = 7.0f64;
    let karras = |min: f64, max: f64, n: usize, i: usize| {
        (max.powf(1.0 / rho) + i as f64 / (n - 1) as f64 * (min.powf(1.0 / rho) - max.powf(1.0 / rho))).powf(rho)
    };
    let (smin, smax) = (0.029167532920837402, 14.614646911621094);
    for kind in [SchedulerKind::DpmSolverMultistep { karras: true }, SchedulerKind::Euler, SchedulerKind::Lms] {
        let on = Overrides { use_karras_sigmas: Some(true), ..Default::default() };
        let o = if matches!(kind, SchedulerKind::DpmSolverMultistep { .. }) { Overrides::default() } else { on };
        let mut s = with(kind, o);
        s.set_timesteps(20).unwrap();
        let sig = s.sigmas().unwrap();
        assert_eq!(sig.len(), 21);
        assert_eq!(sig[20], 0.0);
        for i in [0, 1, 7, 19] {
            assert_rel(&format!("{kind} karras sigma {i}"), sig[i], karras(smin, smax, 20, i), 1e-6);
        }
        assert!(sig.windows(2).all(|w| w[0] > w[1]), "{kind}: decreasing");
        let ts = s.timesteps();
        assert!((ts[0] - 999.0).abs() < 1e-3, "{kind}: first timestep {}", ts[0]);
        assert!(ts[19].abs() < 1e-3, "{kind}: last timestep {}", ts[19]);
        assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{kind}: timesteps decreasing");
        if matches!(kind, SchedulerKind::DpmSolverMultistep { .. }) {
            assert!(ts.iter().all(|t| t.fract() == 0.0), "DPM karras timesteps are rounded");
            assert_eq!(serde_json::to_value(s.config()).unwrap()["use_karras_sigmas"], true);
        }
    }
    // the timestep of a karras sigma lies where the training sigma table crosses it
    let mut s = with(SchedulerKind::Euler, Overrides { use_karras_sigmas: Some(true), ..Default::default() });
    s.set_timesteps(20).unwrap();
    let table: Vec<f64> = s.alphas_cumprod().iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
    for i in 1..19 {
        let t = s.timesteps()[i];
        let (lo, hi) = (table[t.floor() as usize], table[t.ceil() as usize]);
        let sigma = s.sigmas().unwrap()[i];
        assert!(lo <= sigma * (1.0 + 1e-5) && sigma <= hi * (1.0 + 1e-5), "sigma {sigma} at t={t} not in [{lo}, {hi}]");
    }
}

#[test]
fn dpm_karras_trajectory_runs_and_ends_at_x0() {
    // the last DPM step goes to sigma 0 with a first-order update, i.e. returns the predicted x0
    let mut s = with(SchedulerKind::DpmSolverMultistep { karras: true }, Overrides::default());
    s.set_timesteps(8).unwrap();
    let g = goldens();
    let mut x = row(g.get("sample_unscaled"), None);
    for k in 0..8 {
        let eps = row(g.get("model_outputs"), Some(k));
        let last = k == 7;
        let sigma = s.sigmas().unwrap()[k];
        let x0 = if last {
            let a = 1.0 / (sigma * sigma + 1.0).sqrt();
            Some(f32s((x.clone() - eps.clone().mul_scalar(sigma * a)).div_scalar(a)))
        } else {
            None
        };
        x = s.step(eps, k, x, None).prev_sample;
        if let Some(x0) = x0 {
            check_close("dpm final step", &f32s(x.clone()), &x0, 1e-5, 1e-5);
        }
    }
    assert!(f32s(x).iter().all(|v| v.is_finite()));
}

#[test]
fn lms_coefficients_are_exact_lagrange_integrals() {
    let sig = [14.6, 9.7, 6.1, 3.3, 1.2, 0.0];
    // order 1: integral of 1
    assert_rel("order 1", LMSDiscreteScheduler::lms_coefficient(&sig, 1, 0, 0), sig[1] - sig[0], 1e-14);
    // the basis polynomials sum to 1, so the coefficients sum to the interval length
    for (order, t) in [(2, 1), (3, 2), (4, 3), (4, 4)] {
        let sum: f64 = (0..order).map(|k| LMSDiscreteScheduler::lms_coefficient(&sig, order, t, k)).sum();
        assert_rel(&format!("sum order {order}"), sum, sig[t + 1] - sig[t], 1e-12);
    }
    // order 2 at t=1 in closed form: basis (tau - s0)/(s1 - s0) for the current point
    let (s0, s1, s2) = (sig[0], sig[1], sig[2]);
    let want = ((s2 - s0).powi(2) - (s1 - s0).powi(2)) / 2.0 / (s1 - s0);
    assert_rel("order 2 coefficient", LMSDiscreteScheduler::lms_coefficient(&sig, 2, 1, 0), want, 1e-12);
    // order 4 cubic basis vs a fine trapezoid rule
    let basis = |tau: f64| (1..4).map(|k| (tau - sig[4 - k]) / (sig[4] - sig[4 - k])).product::<f64>();
    let m = 200_000;
    let (a, b) = (sig[4], sig[5]);
    let hstep = (b - a) / m as f64;
    let trap: f64 = (0..m).map(|i| (basis(a + i as f64 * hstep) + basis(a + (i + 1) as f64 * hstep)) / 2.0 * hstep).sum();
    assert_rel("order 4 coefficient", LMSDiscreteScheduler::lms_coefficient(&sig, 4, 4, 0), trap, 1e-8);
}

#[test]
fn rescale_betas_zero_snr() {
    let o = Overrides { rescale_betas_zero_snr: Some(true), timestep_spacing: Some(TimestepSpacing::Trailing), ..vpred() };
    let mut ddim = with(SchedulerKind::Ddim, o.clone());
    let acp = ddim.alphas_cumprod().to_vec();
    assert_eq!(acp[999], 0.0, "zero terminal SNR");
    assert_rel("first alpha kept", acp[0], 0.9991499781608582, 1e-6);
    ddim.set_timesteps(4).unwrap();
    assert_eq!(ddim.timesteps()[0], 999.0);
    // v-prediction at SNR 0: x0 = -v
    let (v, vt) = rng_tensor(7, 1.0);
    let (_, xt) = rng_tensor(8, 1.0);
    let out = ddim.step(vt, 0, xt, None);
    let neg: Vec<f32> = v.iter().map(|&x| -x).collect();
    check_close("x0 at zero SNR", &f32s(out.pred_original_sample.unwrap()), &neg, 1e-6, 1e-6);
    // Euler family: acp[-1] = 2^-24 so the first sigma is finite (~4096)
    let mut e = with(SchedulerKind::Euler, o);
    assert_eq!(e.alphas_cumprod()[999], 2f64.powi(-24));
    e.set_timesteps(4).unwrap();
    let s0 = e.sigmas().unwrap()[0];
    assert_rel("sigma max", s0, ((1.0 - 2f64.powi(-24)) / 2f64.powi(-24)).sqrt(), 1e-6);
    assert_eq!(e.init_noise_sigma(), s0);
}

#[test]
fn ddim_eta_uses_the_given_noise() {
    let o = Overrides { eta: Some(1.0), ..Default::default() };
    let mut s = with(SchedulerKind::Ddim, o);
    assert!(s.needs_noise());
    s.set_timesteps(10).unwrap();
    let acp = s.alphas_cumprod().to_vec();
    let (x, xt) = rng_tensor(9, 1.0);
    let (e, et) = rng_tensor(10, 1.0);
    let (z, zt) = rng_tensor(11, 1.0);
    let out = s.step(et, 0, xt, Some(zt));
    let (a, ap) = (acp[901], acp[801]);
    let var = (1.0 - ap) / (1.0 - a) * (1.0 - a / ap);
    let want: Vec<f32> = (0..x.len())
        .map(|i| {
            let x0 = (x[i] as f64 - (1.0 - a).sqrt() * e[i] as f64) / a.sqrt();
            (ap.sqrt() * x0 + (1.0 - ap - var).sqrt() * e[i] as f64 + var.sqrt() * z[i] as f64) as f32
        })
        .collect();
    check_close("ddim eta=1", &f32s(out.prev_sample), &want, 1e-5, 1e-5);
}

#[test]
fn pndm_with_prk_steps() {
    let mut file = file_config();
    file.skip_prk_steps = Some(false);
    let mut s = create(SchedulerKind::Pndm, &file, &Overrides::default()).unwrap();
    s.set_timesteps(20).unwrap();
    let ts = s.timesteps().to_vec();
    assert_eq!(ts.len(), 12 + 17);
    assert_eq!(&ts[..13], [951.0, 926.0, 926.0, 901.0, 901.0, 876.0, 876.0, 851.0, 851.0, 826.0, 826.0, 801.0, 801.0]);
    assert_eq!(ts[28], 1.0);
    let g = goldens();
    let mut x = row(g.get("sample_unscaled"), None);
    for k in 0..ts.len() {
        x = s.step(row(g.get("model_outputs"), Some(k % 20)), k, x, None).prev_sample;
    }
    assert!(f32s(x).iter().all(|v| v.is_finite()));
}

#[test]
fn config_resolution() {
    let empty = SchedulerConfig::default();
    // class defaults (diffusers 0.42)
    let cfg = |kind: SchedulerKind, file: &SchedulerConfig, o: &Overrides| create(kind, file, o).unwrap().config().clone();
    let ddim = cfg(SchedulerKind::Ddim, &empty, &Overrides::default());
    assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
    assert_eq!(ddim.beta_schedule, BetaSchedule::Linear);
    assert_eq!((ddim.beta_start, ddim.beta_end, ddim.steps_offset), (0.0001, 0.02, 0));
    let ClassOptions::Ddim(d) = &ddim.options else { panic!() };
    assert!(d.clip_sample && d.set_alpha_to_one && d.eta == 0.0);
    let ClassOptions::Pndm(p) = cfg(SchedulerKind::Pndm, &empty, &Overrides::default()).options else { panic!() };
    assert!(!p.skip_prk_steps && !p.set_alpha_to_one);
    for kind in [SchedulerKind::Euler, SchedulerKind::EulerAncestral, SchedulerKind::Lms, DPM] {
        let c = cfg(kind, &empty, &Overrides::default());
        assert_eq!(c.timestep_spacing, TimestepSpacing::Linspace, "{kind}");
        assert_eq!(c.prediction_type, PredictionType::Epsilon, "{kind}");
    }
    let ClassOptions::DpmSolverMultistep(dpm) = cfg(DPM, &empty, &Overrides::default()).options else { panic!() };
    assert_eq!((dpm.solver_order, dpm.algorithm_type, dpm.solver_type), (2, AlgorithmType::DpmSolverPlusPlus, SolverType::Midpoint));
    assert!(dpm.lower_order_final && !dpm.use_karras_sigmas && dpm.lambda_min_clipped == f64::NEG_INFINITY);

    // file over defaults, overrides over file; unknown keys and Python's -Infinity are accepted
    let file = SchedulerConfig::from_json(
        r#"{"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.42.1", "timestep_spacing": "leading",
            "prediction_type": "v_prediction", "lambda_min_clipped": -Infinity, "some_future_key": [1, 2]}"#,
        "test.json",
    )
    .unwrap();
    assert_eq!(file.lambda_min_clipped, Some(f64::NEG_INFINITY));
    assert_eq!(SchedulerKind::from_config(&file).unwrap(), SchedulerKind::Euler);
    let c = cfg(SchedulerKind::Euler, &file, &Overrides::default());
    assert_eq!((c.timestep_spacing, c.prediction_type), (TimestepSpacing::Leading, PredictionType::VPrediction));
    let c = cfg(SchedulerKind::Euler, &file, &spacing(TimestepSpacing::Trailing));
    assert_eq!(c.timestep_spacing, TimestepSpacing::Trailing);
    // the printed config has diffusers' key names
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["_class_name"], "EulerDiscreteScheduler");
    assert_eq!(v["timestep_spacing"], "trailing");
    assert_eq!(v["prediction_type"], "v_prediction");
    assert_eq!(v["final_sigmas_type"], "zero");

    // kinds: CLI names and class names
    for name in SchedulerKind::CLI_NAMES {
        let k: SchedulerKind = name.parse().unwrap();
        assert_eq!(k.to_string(), name);
    }
    assert_eq!("dpm++2m-karras".parse::<SchedulerKind>().unwrap(), SchedulerKind::DpmSolverMultistep { karras: true });
    assert_eq!(SchedulerKind::from_config(&file_config()).unwrap(), SchedulerKind::Pndm);
    let karras_file = SchedulerConfig { use_karras_sigmas: Some(true), ..Default::default() };
    assert_eq!(
        SchedulerKind::from_class_name("DPMSolverMultistepScheduler", &karras_file).unwrap(),
        SchedulerKind::DpmSolverMultistep { karras: true }
    );
    // the preset wins over the file, an explicit override over the preset
    let ClassOptions::DpmSolverMultistep(d) = cfg(DPM, &karras_file, &Overrides::default()).options else { panic!() };
    assert!(!d.use_karras_sigmas);
    let o = Overrides { use_karras_sigmas: Some(false), ..Default::default() };
    let ClassOptions::DpmSolverMultistep(d) = cfg(SchedulerKind::DpmSolverMultistep { karras: true }, &empty, &o).options else { panic!() };
    assert!(!d.use_karras_sigmas);
}

#[test]
fn errors_say_what_to_do() {
    let err = |r: Result<Box<dyn Scheduler>, SchedulerError>| r.err().expect("error").to_string();
    let e = "heun".parse::<SchedulerKind>().unwrap_err().to_string();
    assert!(e.contains("heun") && e.contains("dpm++2m-karras"), "{e}");
    let e = SchedulerKind::from_class_name("UniPCMultistepScheduler", &SchedulerConfig::default()).unwrap_err();
    assert_eq!(pseudoword::Error::from(e.clone()).remedy(), Some(pseudoword::error::Remedy::Scheduler), "front ends name their control for it");
    let e = e.to_string();
    assert!(e.contains("UniPCMultistepScheduler") && e.contains("Choose a scheduler explicitly"), "{e}");
    let bad = SchedulerConfig { timestep_spacing: Some("sideways".into()), ..Default::default() };
    let e = err(create(SchedulerKind::Euler, &bad, &Overrides::default()));
    assert!(e.contains("timestep_spacing") && e.contains("sideways") && e.contains("trailing"), "{e}");
    let e = err(create(SchedulerKind::Ddim, &file_config(), &Overrides { use_karras_sigmas: Some(true), ..Default::default() }));
    assert!(e.contains("use_karras_sigmas") && e.contains("DDIMScheduler"), "{e}");
    let e = err(create(SchedulerKind::Pndm, &file_config(), &Overrides { prediction_type: Some(PredictionType::Sample), ..Default::default() }));
    assert!(e.contains("prediction_type"), "{e}");
    let e = SchedulerConfig::from_json("{\"beta_start\": \"x\"}", "bad.json").unwrap_err().to_string();
    assert!(e.contains("bad.json"), "{e}");
    for kind in [SchedulerKind::Ddim, SchedulerKind::Pndm, SchedulerKind::Euler, SchedulerKind::Lms] {
        let mut s = create(kind, &file_config(), &Overrides::default()).unwrap();
        for n in [0, 1001] {
            let e = s.set_timesteps(n).unwrap_err();
            assert_eq!(e, SchedulerError::InvalidSteps { steps: n, max: 1000 });
            assert!(e.to_string().contains("1 to 1000"));
        }
        s.set_timesteps(1).unwrap();
        // leading spacing with steps_offset 1 would need timestep 1000 (diffusers: IndexError)
        match s.set_timesteps(1000) {
            Ok(()) => assert_eq!(s.timesteps().len(), 1000),
            Err(e) => assert!(matches!(e, SchedulerError::InvalidConfig { key: "steps_offset", .. }), "{e}"),
        }
    }
}

#[test]
fn library_code_never_reads_tensors_back() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/schedulers");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for bad in ["into_data(", "to_data(", "into_scalar(", "into_data_async"] {
            assert!(!text.contains(bad), "{} calls {bad}", path.display());
        }
    }
}
