//! `make-model`: the real architectures' configs parse with the library and give the published
//! parameter counts; every architecture's folder and single file have the real layout (written
//! header-only: sparse files of the real size, in milliseconds); and, for the smallest real
//! architecture (BK-SDM-Tiny), a full folder and a full single file (same seed) go through the
//! real loaders and compute the same numbers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use common::cli::{json, pw};
use pseudoword::loader::{LoadOptions, Parts};
use pseudoword::make_model::{self, Arch, ArchSpecs, MakeOptions};
use pseudoword::models::{AutoencoderKL, AutoencoderKLConfig, CLIPTextConfig, CLIPTextModel, UNet2DConditionConfig, UNet2DConditionModel, UNetCapture};
use pseudoword::native::SingleFileOptions;
use pseudoword::prediction_type::PredictionType;
use pseudoword::schedulers::{Overrides, SchedulerConfig, SchedulerKind};
use pseudoword::weights::ldm::SdVersion;
use pseudoword::weights::{FileSource, LdmCheckpoint, ParamSpec, SafetensorsHeader, canonical_key};

/// Published parameter counts (diffusers / transformers `num_parameters()`).
fn published(arch: Arch) -> (u64, u64, u64) {
    const VAE: u64 = 83_653_863;
    const CLIP_L: u64 = 123_060_480;
    const OPEN_CLIP_H: u64 = 340_387_840;
    match arch {
        Arch::Sd15 => (859_520_964, VAE, CLIP_L),
        Arch::Sd21 | Arch::Sd21Base | Arch::SdTurbo => (865_910_724, VAE, OPEN_CLIP_H),
        Arch::BkSdmSmall => (482_346_884, VAE, CLIP_L),
        Arch::BkSdmTiny => (323_384_964, VAE, CLIP_L),
    }
}

#[test]
fn parameter_counts_are_the_published_ones() {
    for arch in Arch::ALL {
        let p = ArchSpecs::of(arch).unwrap().parameters();
        assert_eq!((p.unet, p.vae, p.text_encoder), published(arch), "{arch}");
    }
}

fn header_of(path: &Path) -> SafetensorsHeader {
    pollster::block_on(SafetensorsHeader::read(&FileSource::open(path).unwrap())).unwrap()
}

/// `(key, shape)` of every parameter the header holds for `model`, under canonical names.
fn canonical(header: &SafetensorsHeader, model: &str) -> BTreeMap<String, Vec<usize>> {
    header.tensors.values().filter_map(|e| Some((canonical_key(model, &e.name)?, e.shape.clone()))).collect()
}

fn expected(specs: &[ParamSpec]) -> BTreeMap<String, Vec<usize>> {
    specs.iter().map(|s| (s.key.clone(), s.shape.clone())).collect()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

fn header_only(arch: Arch, out: PathBuf, variant: Option<&str>, single_file: bool) -> make_model::MakeReport {
    let opts = MakeOptions { arch, out, variant: variant.map(str::to_string), single_file, seed: 0, header_only: true };
    make_model::make_model(&opts, &mut |_| {}).unwrap()
}

/// Every architecture's diffusers folder, as written: configs parse with the library (the
/// scheduler builds), each weights file holds exactly the parameters those configs imply (keys as
/// the public files name them, mapped by the loader's key rules), the tokenizer pads as the
/// repository says.
#[test]
fn folders_have_the_public_layout_and_load_their_configs() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in Arch::ALL {
        let dir = tmp.path().join(arch.name());
        let report = header_only(arch, dir.clone(), None, false);
        let index: serde_json::Value = serde_json::from_str(&read(&dir, "model_index.json")).unwrap();
        assert_eq!(index["_class_name"], "StableDiffusionPipeline", "{arch}");
        for c in ["scheduler", "text_encoder", "tokenizer", "unet", "vae"] {
            assert!(index[c].is_array() && dir.join(c).is_dir(), "{arch}: {c}");
        }
        let unet_text = read(&dir, "unet/config.json");
        let unet = if arch == Arch::SdTurbo {
            // its `"upcast_attention": null`: see sd_turbo_unet_config_parses_as_diffusers_reads_it
            assert!(serde_json::from_str::<serde_json::Value>(&unet_text).unwrap()["upcast_attention"].is_null());
            ArchSpecs::of(arch).unwrap().unet_config
        } else {
            UNet2DConditionConfig::from_json(&unet_text, "unet").unwrap_or_else(|e| panic!("{arch}: {e}"))
        };
        let vae = AutoencoderKLConfig::from_json(&read(&dir, "vae/config.json"), "vae").unwrap();
        let text = CLIPTextConfig::from_json(&read(&dir, "text_encoder/config.json"), "te").unwrap();
        let sched = SchedulerConfig::from_json(&read(&dir, "scheduler/scheduler_config.json"), "s").unwrap();
        let kind = SchedulerKind::from_config(&sched).unwrap();
        let mut s = pseudoword::schedulers::create(kind, &sched, &Overrides::default()).unwrap();
        s.set_timesteps(1).unwrap();
        let (want_kind, want_pred) = match arch {
            Arch::Sd21 => (SchedulerKind::Ddim, "v_prediction"),
            Arch::SdTurbo => (SchedulerKind::Euler, "epsilon"),
            _ => (SchedulerKind::Pndm, "epsilon"),
        };
        assert_eq!((kind, sched.prediction_type.as_deref().unwrap_or("epsilon")), (want_kind, want_pred), "{arch}");
        if arch == Arch::SdTurbo {
            assert_eq!(s.timesteps(), &[999.0], "trailing spacing: one step at t=999");
        }
        let sample = serde_json::from_str::<serde_json::Value>(&read(&dir, "unet/config.json")).unwrap()["sample_size"].as_u64();
        assert_eq!(sample, Some(if arch == Arch::Sd21 { 96 } else { 64 }), "{arch}");
        assert_eq!(unet.upcast_attention, arch == Arch::Sd21, "{arch}");
        assert_eq!(unet.use_linear_projection, arch.open_clip(), "{arch}");

        let te = header_of(&dir.join("text_encoder/model.safetensors"));
        assert_eq!(canonical(&te, CLIPTextModel::NAME), expected(&CLIPTextModel::param_specs(&text)), "{arch} text encoder");
        let un = header_of(&dir.join("unet/diffusion_pytorch_model.safetensors"));
        assert_eq!(canonical(&un, UNet2DConditionModel::NAME), expected(&UNet2DConditionModel::param_specs(&unet)), "{arch} unet");
        let va = header_of(&dir.join("vae/diffusion_pytorch_model.safetensors"));
        assert_eq!(canonical(&va, AutoencoderKL::NAME), expected(&AutoencoderKL::param_specs(&vae)), "{arch} vae");
        // SD 1.5 / 2.1 VAE files still use diffusers' pre-0.15 attention names (the loader maps them)
        let legacy = matches!(arch, Arch::Sd15 | Arch::Sd21 | Arch::Sd21Base);
        assert_eq!(va.tensors.contains_key("encoder.mid_block.attentions.0.query.weight"), legacy, "{arch}");
        assert!(un.tensors.values().chain(va.tensors.values()).all(|e| e.dtype_name == "F32"));

        let tok = pseudoword::native::load_tokenizer(&dir, &SingleFileOptions::default()).unwrap();
        assert_eq!(tok.pad_id(), if arch.open_clip() { 0 } else { 49407 }, "{arch}: SD 2.x pads with `!`");
        let (u, v, t) = published(arch);
        assert_eq!((report.parameters.unet, report.parameters.vae, report.parameters.text_encoder), (u, v, t));
        let on_disk: u64 = walk(&dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        assert_eq!(report.bytes, on_disk, "{arch}: reported bytes");
        eprintln!("{arch}: {:.2} GB (f32)", report.bytes as f64 / 1e9);
    }
    // the fp16 variant: `*.fp16.safetensors`, F16 weights (transformers' int64 position_ids stay)
    let dir = tmp.path().join("sd15-fp16");
    let report = header_only(Arch::Sd15, dir.clone(), Some("fp16"), false);
    for f in ["text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"] {
        let h = header_of(&dir.join(f));
        assert!(h.tensors.values().all(|e| e.dtype_name == "F16" || e.name.ends_with("position_ids")), "{f}");
    }
    assert!((2_000_000_000..2_200_000_000).contains(&report.bytes), "SD 1.5 fp16 is about 2.1 GB: {}", report.bytes);
    let err = make_model::make_model(&MakeOptions { variant: Some("bf16".into()), ..MakeOptions::new(Arch::Sd15, tmp.path().join("x")) }, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("fp16"), "{err}");
}

/// stabilityai/sd-turbo's `unet/config.json` has `"upcast_attention": null` (diffusers' conversion
/// script leaves it unset); diffusers reads it as false. The library must load that file too.
#[test]
fn sd_turbo_unet_config_parses_as_diffusers_reads_it() {
    let text = make_model::config_text(&make_model::configs::unet::config(Arch::SdTurbo));
    let c = UNet2DConditionConfig::from_json(&text, "stabilityai/sd-turbo unet/config.json").unwrap();
    assert!(!c.upcast_attention);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// Every architecture's single file, as written: the library's LDM converter maps it back to
/// exactly the parameters of the diffusers configs (OpenCLIP's fused q/k/v split, VAE 1x1
/// convolutions squeezed, buffers skipped), and the configs it infers give the same models.
#[test]
fn single_files_convert_back_to_the_diffusers_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in Arch::ALL {
        let dir = tmp.path().join(arch.name());
        let report = header_only(arch, dir.clone(), None, true);
        let file = PathBuf::from(&report.out);
        assert_eq!(file, dir.join(format!("{}.safetensors", arch.single_file_stem())));
        assert!(dir.join("tokenizer/vocab.json").is_file());
        let header = header_of(&file);
        assert!(header.tensors.contains_key("alphas_cumprod") && header.tensors.keys().all(|k| !k.starts_with("model_ema")));
        let ckpt = LdmCheckpoint::from_header(&header).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(ckpt.version, if arch.open_clip() { SdVersion::V2 } else { SdVersion::V1 }, "{arch}");
        assert_eq!(ckpt.pad_token(), if arch.open_clip() { "!" } else { "<|endoftext|>" });
        let specs = ArchSpecs::of(arch).unwrap();
        assert_eq!(canonical(&ckpt.unet, UNet2DConditionModel::NAME), expected(&specs.unet), "{arch} unet");
        assert_eq!(canonical(&ckpt.vae, AutoencoderKL::NAME), expected(&specs.vae), "{arch} vae");
        assert_eq!(canonical(&ckpt.text_encoder, CLIPTextModel::NAME), expected(&specs.text_encoder), "{arch} text encoder");
        // inferred configs imply the same parameters (768-v: pass v_prediction, as users must)
        let pred = (arch == Arch::Sd21).then_some(PredictionType::VPrediction);
        let unet = UNet2DConditionConfig::from_json(&ckpt.unet_config(pred).unwrap(), "inferred").unwrap();
        assert_eq!(expected(&UNet2DConditionModel::param_specs(&unet)), expected(&specs.unet), "{arch} inferred unet");
        assert_eq!(pseudoword::loader::unet_sample_size(&ckpt.unet_config(pred).unwrap()), if arch == Arch::Sd21 { 96 } else { 64 });
        let vae = AutoencoderKLConfig::from_json(&ckpt.vae_config().unwrap(), "inferred").unwrap();
        assert_eq!(expected(&AutoencoderKL::param_specs(&vae)), expected(&specs.vae), "{arch} inferred vae");
        let text = CLIPTextConfig::from_json(&ckpt.text_encoder_config().unwrap(), "inferred").unwrap();
        assert_eq!(expected(&CLIPTextModel::param_specs(&text)), expected(&specs.text_encoder), "{arch} inferred text encoder");
        assert_eq!((text.hidden_act.as_str(), text.num_attention_heads), if arch.open_clip() { ("gelu", 16) } else { ("quick_gelu", 12) });
    }
}

/// Values the model computes, to compare two loads of the same weights.
struct Outputs {
    text: Vec<f32>,
    unet: Vec<f32>,
    decoded: Vec<f32>,
}

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn run(sd: &pseudoword::pipeline::StableDiffusion) -> Outputs {
    let device = sd.device();
    let (_, out) = sd.prompt.encode(&["a photo of an astronaut riding a horse"], false).unwrap();
    let text = out.last_hidden_state;
    assert_eq!(text.dims(), [1, 77, 768]);
    let latents: Vec<f32> = (0..4 * 8 * 8).map(|i| (i * 7919 % 97) as f32 / 48.5 - 1.0).collect();
    let latents = Tensor::<4>::from_data(TensorData::new(latents, [1, 4, 8, 8]), &device);
    let eps = sd.unet.forward(latents.clone(), &[500.0], text.clone(), &mut UNetCapture::none());
    let decoded = sd.vae.decode(latents / sd.vae.scaling_factor);
    assert_eq!(decoded.dims(), [1, 3, 64, 64]);
    Outputs { text: f32s(text), unet: f32s(eps), decoded: f32s(decoded) }
}

/// BK-SDM-Tiny at full size (2.1 GB in f32): `make-model` writes the folder, the loader builds the
/// pipeline and it encodes a prompt; the single file of the same seed, written by the CLI, loads
/// through the single-file path (configs inferred, tokenizer next to it) and computes exactly the
/// same text embedding, UNet output and decoded image. (The two are written and loaded side by
/// side: most of this test is the loader's time in an unoptimised build.)
#[test]
fn bk_sdm_tiny_folder_and_single_file_load_and_agree() {
    use burn::module::Module;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bk-sdm-tiny");
    let single = tmp.path().join("ldm");
    let file = single.join("bk-sdm-tiny.safetensors");
    let (u, v, te) = published(Arch::BkSdmTiny);
    let device = Device::flex();
    let (folder, ldm) = std::thread::scope(|scope| {
        let cli = scope.spawn(|| json(&pw(&["make-model", "--arch", "bk-sdm-tiny", "--out", single.to_str().unwrap(), "--single-file", "--seed", "0"])));
        let report = make_model::make_model(&MakeOptions::new(Arch::BkSdmTiny, &dir), &mut |_| {}).unwrap();
        eprintln!("folder: {} bytes in {:.1} s", report.bytes, report.seconds);
        assert!(make_model::is_complete(&MakeOptions::new(Arch::BkSdmTiny, &dir)));
        assert!(!make_model::is_complete(&MakeOptions { single_file: true, ..MakeOptions::new(Arch::BkSdmTiny, &dir) }));
        let out = cli.join().unwrap();
        assert_eq!((out["out"].as_str(), out["arch"].as_str()), (file.to_str(), Some("bk-sdm-tiny")));
        assert_eq!(out["parameters"], serde_json::json!({"unet": u, "vae": v, "text_encoder": te}));
        let tokenizer_bytes: u64 = walk(&single.join("tokenizer")).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        assert_eq!(out["bytes"].as_u64().unwrap(), std::fs::metadata(&file).unwrap().len() + tokenizer_bytes);
        assert!(out["seconds"].as_f64().unwrap() > 0.0);

        let from_single = scope.spawn(|| {
            let opts = LoadOptions { parts: Parts::All, ..LoadOptions::default() };
            let sd = pseudoword::native::load(&file, &SingleFileOptions::default(), &opts, &device).unwrap().into_full().unwrap();
            assert_eq!((sd.sample_size, sd.name.as_str()), (64, "bk-sdm-tiny"));
            run(&sd)
        });
        let t = std::time::Instant::now();
        let sd = pseudoword::native::load_stable_diffusion(&dir, None, &device).unwrap();
        eprintln!("folder loaded in {:.1} s", t.elapsed().as_secs_f64());
        assert_eq!((sd.sample_size, sd.default_scheduler, sd.name.as_str()), (64, SchedulerKind::Pndm, "bk-sdm-tiny"));
        assert_eq!((sd.unet.num_params() as u64, sd.vae.num_params() as u64, sd.prompt.text_encoder.num_params() as u64), (u, v, te));
        let folder = run(&sd);
        drop(sd);
        (folder, from_single.join().unwrap())
    });
    assert!(folder.text.iter().chain(&folder.unet).chain(&folder.decoded).all(|x| x.is_finite()));
    let spread = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
    eprintln!("mean squares: text {:.3}, unet {:.3}, image {:.3}", spread(&folder.text), spread(&folder.unet), spread(&folder.decoded));
    assert!(spread(&folder.text) > 0.1 && spread(&folder.unet) > 1e-3, "sane scales: activations neither vanish nor explode");
    assert_eq!(ldm.text, folder.text, "same seed: the single file holds the folder's text encoder");
    assert_eq!(ldm.unet, folder.unet, "same UNet");
    assert_eq!(ldm.decoded, folder.decoded, "same VAE");
}

/// The writer's f16 rounding is IEEE round-to-nearest-even, as `half` (and torch) round.
#[test]
fn f16_rounding_matches_half() {
    let mut rng = make_model::ParamRng::new(7, "f16");
    let mut v = vec![0f32; 1 << 16];
    rng.fill(&mut v, 3.0, 0.0);
    let specials = [0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 1e6, 6.1035156e-5, 6.0e-5, 5.96e-8, 2.9e-8, 3.0e-8, 1e-10, f32::INFINITY, -2.5e-6, 1.0009766, 1.0004883, 1.0014648];
    for (i, x) in v.iter().map(|x| x * 1e-3).chain(v.iter().copied()).chain(specials).enumerate() {
        assert_eq!(make_model::writer::f16_bits(x.to_bits()), half::f16::from_f32(x).to_bits(), "{i}: {x:e}");
    }
    let mut out = vec![0u16; v.len()];
    make_model::writer::f32_to_f16_bits(&v, &mut out);
    assert!(out.iter().zip(&v).all(|(h, x)| *h == half::f16::from_f32(*x).to_bits()));
}
