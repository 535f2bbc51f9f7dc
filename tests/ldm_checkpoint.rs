//! Single-file (original LDM) checkpoints: the tiny-sd1 model as an LDM file (assembled from
//! tests/fixtures/ldm/tiny-sd1-ldm.json, whose conversion diffusers' own converters checked: see
//! tests/fixtures/ldm/make_ldm.py) converts to exactly the diffusers folder's parameters, runs
//! like it, and its inferred configs match; an SD 2-style OpenCLIP text encoder converts to what
//! diffusers' `convert_open_clip_checkpoint` gives; wrong files and a missing tokenizer are typed
//! errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use pseudoword::error::{ConfigError, Error, WeightsError};
use pseudoword::models::{AutoencoderKL, AutoencoderKLConfig, CLIPTextConfig, CLIPTextModel, UNet2DConditionConfig, UNet2DConditionModel, UNetCapture};
use pseudoword::loader::{LoadOptions, Parts};
use pseudoword::native::SingleFileOptions;

/// The whole pipeline of a single file, through the one loader.
fn load_single_file(path: &Path, opts: &SingleFileOptions, device: &Device, storage: WeightStorage) -> Result<pseudoword::pipeline::StableDiffusion, Error> {
    let load = LoadOptions { storage, parts: Parts::All, ..LoadOptions::default() };
    pseudoword::native::load(path, opts, &load, device)?.into_full()
}

/// The checkpoint's source and converted header.
struct Opened {
    source: FileSource,
    checkpoint: LdmCheckpoint,
}

fn open_checkpoint(path: &Path) -> Result<Opened, Error> {
    let source = FileSource::open(path)?;
    let header = pollster::block_on(SafetensorsHeader::read(&source))?;
    Ok(Opened { checkpoint: LdmCheckpoint::from_header(&header)?, source })
}
use pseudoword::weights::ldm::SdVersion;
use pseudoword::weights::{FileSource, LdmCheckpoint, ParamSpec, SafetensorsHeader, WeightStorage, find_weights_file, load_params};
use safetensors::{Dtype, SafeTensors};

/// Writes the LDM file described by tiny-sd1-ldm.json into `dir` (from the tiny-sd1 files of
/// `variant`: None = F32, Some("fp16") = F16) and returns its path.
fn assemble_ldm(dir: &Path, variant: Option<&str>) -> PathBuf {
    let recipe: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("ldm/tiny-sd1-ldm.json")).unwrap()).unwrap();
    let mut sources: HashMap<String, Vec<u8>> = HashMap::new();
    let mut blobs: Vec<Blob> = vec![];
    for t in recipe["tensors"].as_array().unwrap() {
        let key = t["key"].as_str().unwrap().to_string();
        let shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let numel: usize = shape.iter().product();
        if t.get("fill").is_some() {
            let dtype = if t["dtype"] == "I64" { Dtype::I64 } else { Dtype::F32 };
            blobs.push((key, dtype, shape, vec![0u8; numel * if dtype == Dtype::I64 { 8 } else { 4 }]));
            continue;
        }
        let mut from = t["from"].as_str().unwrap().to_string();
        if let Some(v) = variant {
            from = from.replace(".safetensors", &format!(".{v}.safetensors"));
        }
        let bytes = sources.entry(from.clone()).or_insert_with(|| std::fs::read(tiny_sd1().join(&from)).unwrap());
        let st = SafeTensors::deserialize(bytes).unwrap();
        let view = st.tensor(t["from_key"].as_str().unwrap()).unwrap();
        assert_eq!(view.shape().iter().product::<usize>(), numel);
        blobs.push((key, view.dtype(), shape, view.data().to_vec()));
    }
    let path = dir.join(if variant.is_some() { "tiny-sd1-ldm-fp16.safetensors" } else { "tiny-sd1-ldm.safetensors" });
    write_safetensors(&path, &blobs, None);
    path
}

/// Every parameter in `specs` loaded through `header` (pointing into `source`), flattened.
fn params(source: &FileSource, header: &SafetensorsHeader, model: &str, specs: &[ParamSpec]) -> HashMap<String, Vec<f32>> {
    let mut map = pollster::block_on(load_params(source, header, model, specs, &Device::flex(), WeightStorage::F32, &mut |_, _, _| true)).unwrap();
    let f = |t: Tensor<1>| t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    specs
        .iter()
        .map(|s| {
            let v = match s.shape.len() {
                1 => f(map.take::<1>(&s.key)),
                2 => f(map.take::<2>(&s.key).flatten(0, 1)),
                3 => f(map.take::<3>(&s.key).flatten(0, 2)),
                4 => f(map.take::<4>(&s.key).flatten(0, 3)),
                r => panic!("rank {r}"),
            };
            (s.key.clone(), v)
        })
        .collect()
}

fn folder_params(component: &str, variant: Option<&str>, model: &str, specs: &[ParamSpec]) -> HashMap<String, Vec<f32>> {
    let source = FileSource::open(&find_weights_file(&tiny_sd1().join(component), variant).unwrap()).unwrap();
    let header = pollster::block_on(SafetensorsHeader::read(&source)).unwrap();
    params(&source, &header, model, specs)
}

fn config(component: &str) -> String {
    std::fs::read_to_string(tiny_sd1().join(component).join("config.json")).unwrap()
}

fn assert_same_params(what: &str, got: &HashMap<String, Vec<f32>>, want: &HashMap<String, Vec<f32>>) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, v) in want {
        assert!(got[k] == *v, "{what}: `{k}` differs");
    }
    eprintln!("{what}: {} parameters identical", want.len());
}

fn check_all_params(path: &Path, variant: Option<&str>) {
    let o = open_checkpoint(path).unwrap();
    assert_eq!(o.checkpoint.version, SdVersion::V1);
    let u = UNet2DConditionModel::param_specs(&UNet2DConditionConfig::from_json(&config("unet"), "unet").unwrap());
    let v = AutoencoderKL::param_specs(&AutoencoderKLConfig::from_json(&config("vae"), "vae").unwrap());
    let t = CLIPTextModel::param_specs(&CLIPTextConfig::from_json(&config("text_encoder"), "te").unwrap());
    let c = &o.checkpoint;
    assert_same_params("UNet", &params(&o.source, &c.unet, UNet2DConditionModel::NAME, &u), &folder_params("unet", variant, UNet2DConditionModel::NAME, &u));
    assert_same_params("VAE", &params(&o.source, &c.vae, AutoencoderKL::NAME, &v), &folder_params("vae", variant, AutoencoderKL::NAME, &v));
    assert_same_params("CLIP", &params(&o.source, &c.text_encoder, CLIPTextModel::NAME, &t), &folder_params("text_encoder", variant, CLIPTextModel::NAME, &t));
}

#[test]
fn converted_parameters_equal_the_diffusers_folder() {
    let dir = tempfile::tempdir().unwrap();
    check_all_params(&assemble_ldm(dir.path(), None), None);
    // an f16 single file (like `*-fp16.safetensors` downloads) against the fp16 variant files
    check_all_params(&assemble_ldm(dir.path(), Some("fp16")), Some("fp16"));
}

#[test]
fn single_file_unet_reproduces_the_golden_noise_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let path = assemble_ldm(dir.path(), None);
    let opts = SingleFileOptions { tokenizer: Some(tiny_sd1().join("tokenizer")), config: Some(tiny_sd1()), prediction_type: None };
    let sd = load_single_file(&path, &opts, &Device::flex(), WeightStorage::F32).unwrap();
    assert_eq!((sd.sample_size, sd.name.as_str()), (32, "tiny-sd1-ldm"));
    let g = read_golden(&tiny_sd1().join("goldens/unet.safetensors"));
    let t = |k: &str| {
        let x = g.get(k);
        let shape: [usize; 4] = x.shape.clone().try_into().unwrap();
        Tensor::<4>::from_data(TensorData::new(x.f.clone(), shape), &Device::flex())
    };
    let ehs = g.get("encoder_hidden_states");
    let ehs = Tensor::<3>::from_data(TensorData::new(ehs.f.clone(), [ehs.shape[0], ehs.shape[1], ehs.shape[2]]), &Device::flex());
    let out = sd.unet.forward(t("sample"), &[999.0], ehs, &mut UNetCapture::none());
    let out = out.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    assert_close("single-file UNet t=999", &out, &g.get("noise_pred_t999_int").f, 1e-4);
}

#[test]
fn inferred_configs_match_the_folder_where_shapes_tell() {
    let dir = tempfile::tempdir().unwrap();
    let o = open_checkpoint(&assemble_ldm(dir.path(), None)).unwrap();
    let c = &o.checkpoint;
    let got: serde_json::Value = serde_json::from_str(&c.unet_config(None).unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_str(&config("unet")).unwrap();
    for k in [
        "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
        "mid_block_type", "cross_attention_dim", "attention_head_dim", "use_linear_projection", "transformer_layers_per_block",
    ] {
        assert_eq!(got[k], want[k], "unet {k}");
    }
    // not visible in shapes: SD's values
    assert_eq!((got["norm_num_groups"].as_u64(), got["sample_size"].as_u64()), (Some(32), Some(64)));
    let u = UNet2DConditionConfig::from_json(&c.unet_config(None).unwrap(), "inferred").unwrap();
    assert_eq!(UNet2DConditionModel::param_specs(&u).len(), c.unet.tensors.len());

    let got: serde_json::Value = serde_json::from_str(&c.vae_config().unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_str(&config("vae")).unwrap();
    for k in [
        "in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels", "down_block_types", "up_block_types",
        "scaling_factor", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention",
    ] {
        assert_eq!(got[k], want[k], "vae {k}");
    }
    // the tiny CLIP is 32 wide: its head count cannot be inferred (real ones: width / 64)
    let err = c.text_encoder_config().unwrap_err();
    assert!(matches!(err, WeightsError::UnsupportedCheckpoint { .. }) && err.to_string().contains("config.json files of a diffusers model"), "{err}");
    let sched = pseudoword::schedulers::SchedulerConfig::from_json(&c.scheduler_config(None), "s").unwrap();
    let want = pseudoword::schedulers::SchedulerConfig::from_json(&std::fs::read_to_string(tiny_sd1().join("scheduler/scheduler_config.json")).unwrap(), "s").unwrap();
    assert_eq!(sched.class_name, want.class_name);
    assert_eq!((sched.beta_start, sched.beta_end, sched.steps_offset), (want.beta_start, want.beta_end, want.steps_offset));
}

#[test]
fn open_clip_text_encoder_converts_like_diffusers() {
    let source = FileSource::open(&fixtures().join("ldm/tiny-openclip-ldm.safetensors")).unwrap();
    let header = pollster::block_on(SafetensorsHeader::read(&source)).unwrap();
    let (version, te) = LdmCheckpoint::text_encoder_of(&header).unwrap();
    assert_eq!(version, SdVersion::V2);
    // the config diffusers loaded the converted weights into (2 layers: the 3rd resblock dropped)
    let expected = fixtures().join("ldm/tiny-openclip-expected.safetensors");
    let want_cfg: serde_json::Value = serde_json::from_str(&read_golden_meta(&expected)["config"]).unwrap();
    let got_cfg: serde_json::Value = serde_json::from_str(&LdmCheckpoint::text_encoder_config_of(version, &te).unwrap()).unwrap();
    for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "hidden_act"] {
        assert_eq!(got_cfg[k], want_cfg[k], "text encoder {k}");
    }
    let config = CLIPTextConfig::from_json(&got_cfg.to_string(), "inferred").unwrap();
    let specs = CLIPTextModel::param_specs(&config);
    let got = params(&source, &te, CLIPTextModel::NAME, &specs);
    let want_src = FileSource::open(&expected).unwrap();
    let want_header = pollster::block_on(SafetensorsHeader::read(&want_src)).unwrap();
    assert_same_params("OpenCLIP", &got, &params(&want_src, &want_header, CLIPTextModel::NAME, &specs));
}

fn read_golden_meta(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

#[test]
fn wrong_files_and_a_missing_tokenizer_are_typed_errors() {
    // an embedding file is not a checkpoint
    let emb = fixtures().join("embeddings/learned_embeds.safetensors");
    let err = load_single_file(&emb, &SingleFileOptions::default(), &Device::flex(), WeightStorage::F32).err().unwrap();
    assert!(matches!(err, Error::Weights(WeightsError::NotACheckpoint { .. })), "{err}");
    assert!(err.to_string().contains("model.diffusion_model") && err.to_string().contains("load it as an embedding"), "{err}");
    assert_eq!(err.remedy(), Some(pseudoword::error::Remedy::Embedding));
    // so is one component file of a diffusers folder (through the folder API, which takes files too)
    let unet = tiny_sd1().join("unet/diffusion_pytorch_model.safetensors");
    let err = pseudoword::native::load_stable_diffusion(&unet, None, &Device::flex()).err().unwrap();
    assert!(err.to_string().contains("pass the model folder"), "{err}");
    // no --tokenizer and no tokenizer/ next to the file
    let dir = tempfile::tempdir().unwrap();
    let path = assemble_ldm(dir.path(), None);
    let err = load_single_file(&path, &SingleFileOptions::default(), &Device::flex(), WeightStorage::F32).err().unwrap();
    assert!(matches!(err, Error::Config(ConfigError::NoTokenizer { .. })), "{err}");
    assert!(err.to_string().contains("give a CLIP tokenizer folder") && !err.to_string().contains("--"), "{err}");
    assert_eq!(err.remedy(), Some(pseudoword::error::Remedy::Tokenizer));
    // a tokenizer/ next to the file is found; the tiny CLIP's config must then come from --config
    copy_dir(&tiny_sd1().join("tokenizer"), &dir.path().join("tokenizer"));
    let err = load_single_file(&path, &SingleFileOptions::default(), &Device::flex(), WeightStorage::F32).err().unwrap();
    assert!(matches!(err, Error::Weights(WeightsError::UnsupportedCheckpoint { .. })), "{err}");
}

#[test]
fn cli_generate_from_a_single_file_gives_the_folder_image() {
    use common::cli::{json, pw};
    let g = read_golden(&tiny_sd1().join("goldens/pipelines.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let ckpt = assemble_ldm(dir.path(), None);
    let latents = dir.path().join("latents.safetensors");
    write_safetensors(&latents, &[f32_blob("latents", &[1, 4, 32, 32], &g.get("latents_in").f)], None);
    let (png, tensors) = (dir.path().join("cat.png"), dir.path().join("cat.safetensors"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "generate", "--model", &s(&ckpt), "--tokenizer", &s(&tiny_sd1().join("tokenizer")), "--config", &s(&tiny_sd1()),
        "--prompt", "a photo of a cat", "--seed", "7", "--device", "cpu", "--scheduler", "ddim", "--steps", "4",
        "--latents", &s(&latents), "--out", &s(&png), "--out-tensor", &s(&tensors),
    ];
    json(&pw(&args));
    assert_close("generate from the single file", &read_golden(&tensors).get("image").f, &g.get("ddim_4_image").f, 1e-4);
    // without --config the tiny model's configs cannot be inferred: a clear error
    let out = pw(&args[..5].iter().chain(&args[7..]).copied().collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("number of attention heads cannot be inferred") && err.contains("--config DIR"), "{err}");
}
