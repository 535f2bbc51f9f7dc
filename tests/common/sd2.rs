//! SD2-style model folders built by the tests: tokenizer padding with `!`, a gelu CLIP text
//! encoder (width 48, 6 heads, 3 layers), a UNet with linear projections and per-block head
//! counts, a small VAE and a DDIM v-prediction scheduler config; random weights.

use std::collections::HashMap;
use std::path::Path;

use super::*;

/// Writes an SD2-style model folder: tokenizer with pad `!`, a random CLIP text encoder with gelu.
pub fn sd2_style_folder(root: &Path) -> HashMap<String, Vec<f32>> {
    copy_dir(&tiny_sd1().join("tokenizer"), &root.join("tokenizer"));
    let cfg_path = root.join("tokenizer/tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["pad_token"] = "!".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let map_path = root.join("tokenizer/special_tokens_map.json");
    let mut map: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&map_path).unwrap()).unwrap();
    map["pad_token"] = "!".into();
    std::fs::write(&map_path, map.to_string()).unwrap();

    let (d, h, l, inter, vocab) = (48usize, 6usize, 3usize, 61usize, 49408usize);
    std::fs::create_dir_all(root.join("text_encoder")).unwrap();
    let config = serde_json::json!({
        "architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": d, "intermediate_size": inter,
        "num_attention_heads": h, "num_hidden_layers": l, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
        "vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": 512,
        "torch_dtype": "float32", "model_type": "clip_text_model"
    });
    std::fs::write(root.join("text_encoder/config.json"), config.to_string()).unwrap();
    let mut rng = Rng(0x5d2_0001);
    let mut w: HashMap<String, Vec<f32>> = HashMap::new();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![];
    let mut add = |k: String, shape: Vec<usize>, scale: f32, offset: f32, w: &mut HashMap<String, Vec<f32>>| {
        let n = shape.iter().product();
        w.insert(k.clone(), rng.vec(n, scale).into_iter().map(|v| v + offset).collect());
        shapes.push((k, shape));
    };
    add("text_model.embeddings.token_embedding.weight".into(), vec![vocab, d], 1.0, 0.0, &mut w);
    add("text_model.embeddings.position_embedding.weight".into(), vec![77, d], 0.5, 0.0, &mut w);
    for i in 0..l {
        let p = format!("text_model.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}.self_attn.{proj}.weight"), vec![d, d], 1.7 / (d as f32).sqrt(), 0.0, &mut w);
            add(format!("{p}.self_attn.{proj}.bias"), vec![d], 0.1, 0.0, &mut w);
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}.{ln}.weight"), vec![d], 0.3, 1.0, &mut w);
            add(format!("{p}.{ln}.bias"), vec![d], 0.1, 0.0, &mut w);
        }
        add(format!("{p}.mlp.fc1.weight"), vec![inter, d], 1.7 / (d as f32).sqrt(), 0.0, &mut w);
        add(format!("{p}.mlp.fc1.bias"), vec![inter], 0.1, 0.0, &mut w);
        add(format!("{p}.mlp.fc2.weight"), vec![d, inter], 1.7 / (inter as f32).sqrt(), 0.0, &mut w);
        add(format!("{p}.mlp.fc2.bias"), vec![d], 0.1, 0.0, &mut w);
    }
    add("text_model.final_layer_norm.weight".into(), vec![d], 0.3, 1.0, &mut w);
    add("text_model.final_layer_norm.bias".into(), vec![d], 0.1, 0.0, &mut w);
    let blobs: Vec<Blob> = shapes.iter().map(|(k, s)| f32_blob(k, s, &w[k])).collect();
    write_safetensors(&root.join("text_encoder/model.safetensors"), &blobs, None);
    w
}

/// Writes random weights for `specs` (matrices ~ 1/sqrt(fan_in), norm scales ~ 1, small biases).
pub fn write_random(path: &Path, specs: &[pseudoword::weights::ParamSpec], rng: &mut Rng) {
    let blobs: Vec<Blob> = specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let v: Vec<f32> = if s.shape.len() >= 2 {
                let fan_in: usize = s.shape[1..].iter().product();
                rng.vec(n, 1.7 / (fan_in as f32).sqrt())
            } else if s.key.ends_with("norm.weight") || s.key.contains("norm") && s.key.ends_with(".weight") {
                rng.vec(n, 0.1).into_iter().map(|x| x + 1.0).collect()
            } else {
                rng.vec(n, 0.05)
            };
            f32_blob(&s.key, &s.shape, &v)
        })
        .collect();
    write_safetensors(path, &blobs, None);
}

/// Completes the SD2-style folder with a UNet (linear projections, per-block head counts, width
/// 48 cross-attention), a VAE and an SD2-like scheduler config (DDIM, v_prediction).
pub fn sd2_style_full_folder(root: &Path) {
    sd2_style_folder(root);
    let mut rng = Rng(0x5d2_0002);
    let unet = serde_json::json!({
        "_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
        "block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": [2, 4],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 48, "norm_num_groups": 8, "use_linear_projection": true, "upcast_attention": true,
        "flip_sin_to_cos": true, "freq_shift": 0
    });
    std::fs::create_dir_all(root.join("unet")).unwrap();
    std::fs::write(root.join("unet/config.json"), unet.to_string()).unwrap();
    let c = pseudoword::models::UNet2DConditionConfig::from_json(&unet.to_string(), "unet/config.json").unwrap();
    write_random(&root.join("unet/diffusion_pytorch_model.safetensors"), &pseudoword::models::UNet2DConditionModel::param_specs(&c), &mut rng);
    let vae = serde_json::json!({
        "_class_name": "AutoencoderKL", "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "latent_channels": 4,
        "norm_num_groups": 4, "in_channels": 3, "out_channels": 3, "scaling_factor": 0.18215, "sample_size": 64,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    });
    std::fs::create_dir_all(root.join("vae")).unwrap();
    std::fs::write(root.join("vae/config.json"), vae.to_string()).unwrap();
    let c = pseudoword::models::AutoencoderKLConfig::from_json(&vae.to_string(), "vae/config.json").unwrap();
    write_random(&root.join("vae/diffusion_pytorch_model.safetensors"), &pseudoword::models::AutoencoderKL::param_specs(&c), &mut rng);
    std::fs::create_dir_all(root.join("scheduler")).unwrap();
    let sched = serde_json::json!({
        "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": false,
        "steps_offset": 1, "skip_prk_steps": true
    });
    std::fs::write(root.join("scheduler/scheduler_config.json"), sched.to_string()).unwrap();
}

