//! AutoencoderKL parity with diffusers (goldens in tests/fixtures/tiny-sd1/goldens/vae.safetensors)
//! on the CPU backend: decode, encode of a training photo (mean, logvar, std, scaled sample),
//! intermediates, legacy attention key names, chunked mid-block attention.

mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use pseudoword::loader::load_component;
use pseudoword::models::{AttnCapture, AutoencoderKL, VaeCapture};
use pseudoword::weights::{FileSource, find_weights_file};

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn tensor<const D: usize>(g: &Golden) -> Tensor<D> {
    let shape: [usize; D] = g.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(g.f.clone(), shape), &Device::flex())
}

fn load_vae_dir(dir: &Path) -> AutoencoderKL {
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let source = FileSource::open(&find_weights_file(dir, None).unwrap()).unwrap();
    pollster::block_on(load_component::<pseudoword::models::AutoencoderKL, _>(&config, &config_path.display().to_string(), &source, &Device::flex(), pseudoword::weights::WeightStorage::F32, &mut |_, _, _| true)).unwrap()
}

fn golden() -> GoldenFile {
    read_golden(&tiny_sd1().join("goldens/vae.safetensors"))
}

/// `photos/train_1_256.png` as float32 `x / 127.5 - 1`, HWC -> CHW, `[1, 3, 256, 256]`.
fn training_image() -> Tensor<4> {
    let file = std::fs::File::open(fixtures().join("photos/train_1_256.png")).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    let (w, h) = (info.width as usize, info.height as usize);
    let mut chw = vec![0f32; 3 * h * w];
    for (i, px) in buf[..3 * h * w].chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            chw[c * h * w + i] = v as f32 / 127.5 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(chw, [1, 3, h, w]), &Device::flex())
}

fn decode_golden_latents(vae: &AutoencoderKL, g: &GoldenFile, capture: &mut VaeCapture) -> Tensor<4> {
    let latents: Tensor<4> = tensor(g.get("latents"));
    vae.decode_with(latents / vae.scaling_factor, capture)
}

#[test]
fn decode_matches_diffusers() {
    let g = golden();
    let vae = load_vae_dir(&tiny_sd1().join("vae"));
    assert_eq!(vae.downsampling_factor(), 8);
    let mut capture = VaeCapture::intermediates();
    let out = decode_golden_latents(&vae, &g, &mut capture);
    assert_eq!(out.dims(), [1, 3, 256, 256]);
    assert_close("decoded", &f32s(out), &g.get("decoded").f, 5e-5);
    for name in ["post_quant_conv", "decoder.conv_in", "decoder.mid_block"] {
        let t = capture.activations.remove(name).unwrap_or_else(|| panic!("{name} not captured"));
        assert_close(name, &f32s(t), &g.get(&format!("intermediate_{name}")).f, 5e-5);
    }
}

#[test]
fn encode_of_the_training_photo_matches_diffusers() {
    let g = golden();
    let vae = load_vae_dir(&tiny_sd1().join("vae"));
    let mut capture = VaeCapture::intermediates();
    let dist = vae.encode_with(training_image(), &mut capture);
    assert_eq!(dist.mean.dims(), [1, 4, 32, 32]);
    assert_close("latent_mean", &f32s(dist.mean.clone()), &g.get("latent_mean").f, 2e-4);
    assert_close("latent_logvar", &f32s(dist.logvar.clone()), &g.get("latent_logvar").f, 2e-4);
    assert_close("latent_std", &f32s(dist.std.clone()), &g.get("latent_std").f, 2e-4);
    let scaled = dist.sample(tensor(g.get("sample_eps"))) * vae.scaling_factor;
    assert_close("latent_sample_scaled", &f32s(scaled), &g.get("latent_sample_scaled").f, 8e-5);
    for name in ["encoder.mid_block", "quant_conv"] {
        let t = capture.activations.remove(name).unwrap_or_else(|| panic!("{name} not captured"));
        assert_close(name, &f32s(t), &g.get(&format!("intermediate_{name}")).f, 2e-4);
    }
}

#[test]
fn legacy_attention_key_names_load_and_decode_the_same() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vae");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(tiny_sd1().join("vae/config.json"), dir.join("config.json")).unwrap();
    // before diffusers 0.15 the mid-block attention was `AttentionBlock` with these names
    let renames = [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")];
    let mut renamed = 0;
    let blobs: Vec<Blob> = read_blobs(&tiny_sd1().join("vae/diffusion_pytorch_model.safetensors"))
        .into_iter()
        .map(|(k, dt, s, b)| {
            let mut key = k.clone();
            for (new, old) in renames {
                if key.contains(new) {
                    key = key.replace(new, old);
                    renamed += 1;
                }
            }
            (key, dt, s, b)
        })
        .collect();
    assert_eq!(renamed, 16, "q/k/v/out weight+bias in encoder and decoder");
    assert!(blobs.iter().any(|b| b.0 == "decoder.mid_block.attentions.0.proj_attn.weight"));
    write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), &blobs, None);
    let vae = load_vae_dir(&dir);
    let out = decode_golden_latents(&vae, &g, &mut VaeCapture::default());
    assert_close("decoded (legacy keys)", &f32s(out), &g.get("decoded").f, 5e-5);
}

#[test]
fn chunked_mid_block_attention_equals_unchunked() {
    let g = golden();
    let mut vae = load_vae_dir(&tiny_sd1().join("vae"));
    let x: Tensor<4> = tensor(g.get("intermediate_decoder.conv_in"));
    let path = "decoder.mid_block.attentions.0";
    assert_eq!(vae.attentions().map(|a| a.path.as_str()).collect::<Vec<_>>(), ["encoder.mid_block.attentions.0", path]);
    let golden_mid = f32s(vae.decoder.mid_block.forward(x.clone(), None, &mut AttnCapture::default()));
    assert_close("mid block (default chunking) vs golden", &golden_mid, &g.get("intermediate_decoder.mid_block").f, 5e-5);
    // 32x32 = 1024 pixel queries, one head of width 32
    let mut runs = Vec::new();
    for chunk in [None, Some(100)] {
        vae.set_query_chunk_size(chunk);
        let mut capture = AttnCapture::of([path]);
        let out = f32s(vae.decoder.mid_block.attentions[0].forward_spatial(x.clone(), &mut capture));
        let probs = capture.probs.remove(path).unwrap();
        assert_eq!(probs.dims(), [1, 1, 1024, 1024]);
        runs.push((out, f32s(probs)));
    }
    // outputs (with the residual) reach ~10, where one f32 ulp is ~1e-6: chunking may move the
    // matmul's summation order by that much
    assert_close("attention chunk 100 vs unchunked", &runs[1].0, &runs[0].0, 2e-6);
    assert_close("probabilities chunk 100 vs unchunked", &runs[1].1, &runs[0].1, 1e-6);
}
