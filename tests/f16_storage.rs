//! f16 weight storage (half the memory, f32 compute): matrices and kernels are kept as f16 on
//! the device, vectors as f32; results equal f32 storage of the same (fp16) values, and the
//! text encoder still matches the transformers golden computed from the fp16 weights.

mod common;

use burn::tensor::{DType, Device, Tensor};
use common::*;
use pseudoword::models::UNetCapture;
use pseudoword::native::{load_prompt_encoder_with, load_stable_diffusion_with};
use pseudoword::pipeline::{GenerateParams, generate};
use pseudoword::weights::WeightStorage;

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

#[test]
fn text_encoder_with_f16_storage_matches_the_fp16_golden() {
    let g = read_golden(&tiny_sd1().join("goldens/text_encoder.safetensors"));
    let prompts: Vec<String> = serde_json::from_str(&g.metadata["prompts"]).unwrap();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let enc = load_prompt_encoder_with(&tiny_sd1(), Some("fp16"), &Device::flex(), WeightStorage::F16).unwrap();
    let te = &enc.text_encoder.text_model;
    assert_eq!(te.embeddings.token_embedding.weight.val().dtype(), DType::F16, "matrices stored as f16");
    assert_eq!(te.final_layer_norm.weight.val().dtype(), DType::F32, "vectors stay f32");
    let (_, out) = enc.encode(&refs, false).unwrap();
    assert_eq!(out.last_hidden_state.dtype(), DType::F32, "compute is f32");
    assert_close("last_hidden_state (f16 storage)", &f32s(out.last_hidden_state), &g.get("last_hidden_state_from_fp16_weights").f, 2e-5);
}

#[test]
fn unet_and_generation_with_f16_storage_equal_f32_storage_of_the_same_values() {
    let device = Device::flex();
    let a = load_stable_diffusion_with(&tiny_sd1(), Some("fp16"), &device, WeightStorage::F32).unwrap();
    let b = load_stable_diffusion_with(&tiny_sd1(), Some("fp16"), &device, WeightStorage::F16).unwrap();
    assert_eq!(b.unet.conv_in.weight.val().dtype(), DType::F16);
    assert_eq!(b.vae.encoder.conv_in.weight.val().dtype(), DType::F16);
    let mut rng = Rng(5);
    let x = Tensor::<4>::from_data(burn::tensor::TensorData::new(rng.vec(4 * 32 * 32, 1.0), [1, 4, 32, 32]), &device);
    let ehs = Tensor::<3>::from_data(burn::tensor::TensorData::new(rng.vec(77 * 32, 1.0), [1, 77, 32]), &device);
    let ua = f32s(a.unet.forward(x.clone(), &[500.0], ehs.clone(), &mut UNetCapture::none()));
    let ub = f32s(b.unet.forward(x, &[500.0], ehs, &mut UNetCapture::none()));
    assert_close("UNet f16 vs f32 storage", &ub, &ua, 1e-6);
    let mut p = GenerateParams::new("a photo of a cat", &a);
    p.steps = 3;
    p.seed = 9;
    let ia = f32s(generate(&a, &p, None, &mut |_, _, _| true).unwrap().image);
    let ib = f32s(generate(&b, &p, None, &mut |_, _, _| true).unwrap().image);
    assert_close("image f16 vs f32 storage", &ib, &ia, 1e-5);
}
