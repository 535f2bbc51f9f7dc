//! `shaders/flash_attention.wgsl` against its plain-burn reference (`sdpa_reference`) on a
//! native wgpu device (Mesa lavapipe / llvmpipe here: scripts/test.sh installs
//! mesa-vulkan-drivers), and the tiny UNet on wgpu with the kernel against diffusers' golden.
//! The kernel only runs on wgpu; a machine without any wgpu adapter fails these tests (a GPU
//! kernel that never ran is not tested).

mod common;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use common::*;
use pseudoword::kernels::flash_attention::{MAX_HEAD_DIM, keys_per_tile, launches, try_flash_attention};
use pseudoword::loader::load_component;
use pseudoword::models::UNetCapture;
use pseudoword::models::attention::sdpa_reference;
use pseudoword::weights::{FileSource, WeightStorage, find_weights_file};

/// The process's wgpu device (the runtime initialises once per process).
fn wgpu() -> Device {
    static DEVICE: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    DEVICE.get_or_init(|| pseudoword::native::init_wgpu().map_err(|e| e.to_string())).clone().unwrap_or_else(|e| {
        panic!("no wgpu adapter ({e}): install Mesa's Vulkan or GL drivers (scripts/test.sh installs mesa-vulkan-drivers)")
    })
}

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn upload<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

/// q `[b, h, n, d]`, k/v `[b, h, m, d]`, each a `swap_dims(1, 2)` view of `[b, seq, h, d]`
/// memory (as `Attention::forward` makes them) when `strided`.
fn inputs(rng: &mut Rng, b: usize, h: usize, n: usize, m: usize, d: usize, strided: bool, device: &Device) -> [Tensor<4>; 3] {
    let mut make = |len: usize| {
        let v = rng.vec(b * len * h * d, 2.0);
        if strided { upload(&v, [b, len, h, d], device).swap_dims(1, 2) } else { upload(&v, [b, h, len, d], device) }
    };
    [make(n), make(m), make(m)]
}

fn check(b: usize, h: usize, n: usize, m: usize, d: usize, strided: bool, device: &Device, seed: u64) -> f32 {
    let mut rng = Rng(seed);
    let [q, k, v] = inputs(&mut rng, b, h, n, m, d, strided, device);
    let scale = (d as f64).powf(-0.5);
    let got = try_flash_attention(&q, &k, &v, scale).expect("the kernel applies to f32 wgpu tensors");
    assert_eq!(got.dims(), [b, h, n, d]);
    let (want, _) = sdpa_reference(q, k, v, scale, Some(100), false);
    let (got, want) = (f32s(got), f32s(want));
    let err = max_abs_diff(&got, &want);
    let peak = want.iter().fold(0f32, |a, x| a.max(x.abs()));
    println!("b={b} h={h} n={n} m={m} d={d} (tile {}) strided={strided}: max|err| {err:.3e} (|out| up to {peak:.2})", keys_per_tile(d));
    assert!(peak > 0.1, "degenerate output");
    assert!(err <= 2e-5, "flash attention b={b} h={h} n={n} m={m} d={d} strided={strided}: max|err| {err:e} > 2e-5");
    err
}

#[test]
fn kernel_matches_the_plain_burn_reference() {
    let device = wgpu();
    // Cross-attention shapes (77 keys), self-attention shapes, head dims of SD 1.x (40/80/160),
    // SD 2.x (64), tiny models (8), the largest instantiated (256); query and key counts that
    // are no multiple of the workgroup or the tile; contiguous and strided inputs.
    let cases = [
        (2, 8, 100, 77, 40, true),
        (2, 8, 64, 77, 80, true),
        (1, 2, 130, 130, 160, true),
        (2, 5, 257, 257, 64, true),
        (1, 3, 65, 7, 8, false),
        (1, 1, 33, 45, MAX_HEAD_DIM, false),
        (3, 1, 1, 1, 16, false),
    ];
    for (i, &(b, h, n, m, d, strided)) in cases.iter().enumerate() {
        check(b, h, n, m, d, strided, &device, 7 + i as u64);
    }
}

#[test]
fn kernel_at_real_size_self_attention() {
    // SD 1.x's first self-attention at 512x512: 4096 queries and keys, head dim 40. The
    // reference holds [1, 2, 100, 4096] probabilities per chunk; the kernel none. (Also past
    // llvmpipe's 65535-loop-iterations-per-invocation limit had the head dimension been a
    // loop: this failed with 0.36 max error before the launcher unrolled it.)
    let device = wgpu();
    check(1, 2, 4096, 4096, 40, true, &device, 99);
}

#[test]
fn kernel_softmax_is_stable_for_large_scores() {
    // Scores of several hundred: exp() without the running maximum would overflow.
    let device = wgpu();
    let mut rng = Rng(5);
    let [q, k, v] = inputs(&mut rng, 1, 2, 70, 90, 32, true, &device);
    let q = q * 40.0;
    let got = f32s(try_flash_attention(&q, &k, &v, 1.0).unwrap());
    assert!(got.iter().all(|x| x.is_finite()), "non-finite output");
    let (want, _) = sdpa_reference(q, k, v, 1.0, None, false);
    let err = max_abs_diff(&got, &f32s(want));
    assert!(err <= 1e-4, "large scores: max|err| {err:e}");
}

#[test]
fn kernel_declines_what_it_does_not_cover() {
    let device = wgpu();
    let mut rng = Rng(3);
    // CPU tensors take the reference path.
    let [q, k, v] = inputs(&mut rng, 1, 2, 8, 8, 16, false, &Device::flex());
    assert!(try_flash_attention(&q, &k, &v, 0.25).is_none(), "CPU tensors");
    // Autodiff tensors (training, ITO): the kernel has no backward.
    let ad = device.clone().autodiff();
    let [q, k, v] = inputs(&mut rng, 1, 2, 8, 8, 16, false, &ad);
    assert!(try_flash_attention(&q.require_grad(), &k, &v, 0.25).is_none(), "autodiff tensors");
    // v of another width than q, and head dims above the instantiated maximum.
    let q = Tensor::<4>::random([1, 1, 4, 8], Distribution::Default, &device);
    let k = Tensor::<4>::random([1, 1, 4, 8], Distribution::Default, &device);
    let v = Tensor::<4>::random([1, 1, 4, 12], Distribution::Default, &device);
    assert!(try_flash_attention(&q, &k, &v, 1.0).is_none(), "dv != d");
    let big = Tensor::<4>::random([1, 1, 4, MAX_HEAD_DIM + 1], Distribution::Default, &device);
    assert!(try_flash_attention(&big, &big, &big, 1.0).is_none(), "d > MAX_HEAD_DIM");
    let odd = Tensor::<4>::random([1, 1, 4, 42], Distribution::Default, &device);
    assert!(try_flash_attention(&odd, &odd, &odd, 1.0).is_none(), "d not a multiple of 4");
}

#[test]
fn tiny_unet_on_wgpu_with_the_kernel_matches_diffusers() {
    let device = wgpu();
    let dir = tiny_sd1().join("unet");
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let source = FileSource::open(&find_weights_file(&dir, None).unwrap()).unwrap();
    let unet = pollster::block_on(load_component::<pseudoword::models::UNet2DConditionModel, _>(&config, &config_path.display().to_string(), &source, &device, WeightStorage::F32, &mut |_, _, _| true)).unwrap();
    let g = read_golden(&tiny_sd1().join("goldens/unet.safetensors"));
    let t = |name: &str| {
        let gd = g.get(name);
        let shape: [usize; 4] = gd.shape.clone().try_into().unwrap();
        upload(&gd.f, shape, &device)
    };
    let ehs = g.get("encoder_hidden_states");
    let ehs = Tensor::<3>::from_data(TensorData::new(ehs.f.clone(), [ehs.shape[0], ehs.shape[1], ehs.shape[2]]), &device);
    let ts: Vec<f64> = g.get("timestep_t999_int").i.iter().map(|&v| v as f64).collect();
    let before = launches();
    let out = unet.forward(t("sample"), &ts, ehs, &mut UNetCapture::none());
    assert!(launches() > before, "the UNet on wgpu did not use the kernel");
    assert_close("noise_pred_t999_int on wgpu (flash attention)", &f32s(out), &g.get("noise_pred_t999_int").f, 1e-4);
}

#[test]
fn bench_generate_on_wgpu_uses_the_kernel_unless_told_not_to() {
    let run = |extra: &[&str]| {
        let mut args = vec!["bench", "generate", "--arch", "bk-sdm-tiny", "--size", "64", "--steps", "1", "--device", "wgpu"];
        args.extend_from_slice(extra);
        cli::json(&cli::pw(&args))
    };
    let with = run(&[]);
    assert_eq!(with["device"], "wgpu");
    assert!(with["flash_attention_launches"].as_u64().unwrap() > 0, "{with}");
    let without = run(&["--no-flash-attention"]);
    assert_eq!(without["flash_attention_launches"].as_u64(), Some(0), "{without}");
}
