//! CLIPTextModel parity with transformers (goldens in tests/fixtures/tiny-sd1/goldens), on the
//! CPU backend: last_hidden_state, every hidden state, pooled output, fp16 weights, and textual
//! inversion embeddings loaded from diffusers and AUTOMATIC1111 files.

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use pseudoword::native::{load_prompt_encoder, read_embedding_file};

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn golden_prompts(g: &GoldenFile) -> Vec<String> {
    serde_json::from_str(&g.metadata["prompts"]).unwrap()
}

#[test]
fn last_hidden_state_hidden_states_and_pooler_match_transformers() {
    let g = read_golden(&tiny_sd1().join("goldens/text_encoder.safetensors"));
    let prompts = golden_prompts(&g);
    assert_eq!(prompts.len(), 4);
    let enc = load_prompt_encoder(&tiny_sd1(), None, &Device::flex()).unwrap();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (toks, out) = enc.encode(&refs, true).unwrap();
    // ids fed to the encoder are the pipeline's
    let ids: Vec<i64> = toks.iter().flat_map(|t| t.input_ids.iter().map(|&i| i as i64)).collect();
    assert_eq!(ids, g.get("input_ids").i);
    assert!(toks[3].truncated, "the 80-token prompt is truncated");
    assert_eq!(out.last_hidden_state.dims(), [4, 77, 32]);
    assert_close("last_hidden_state", &f32s(out.last_hidden_state), &g.get("last_hidden_state").f, 2e-5);
    assert_close("pooler_output", &f32s(out.pooler_output), &g.get("pooler_output").f, 2e-5);
    assert_eq!(out.hidden_states.len(), 3);
    let hs: Vec<f32> = out.hidden_states.into_iter().flat_map(f32s).collect();
    assert_close("hidden_states", &hs, &g.get("hidden_states").f, 4e-5);
}

#[test]
fn fp16_variant_loads_and_matches_its_golden() {
    let g = read_golden(&tiny_sd1().join("goldens/text_encoder.safetensors"));
    let prompts = golden_prompts(&g);
    let enc = load_prompt_encoder(&tiny_sd1(), Some("fp16"), &Device::flex()).unwrap();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (_, out) = enc.encode(&refs, false).unwrap();
    let got = f32s(out.last_hidden_state);
    // same computation (fp16 weights upcast, f32 compute) as the golden: tight tolerance
    assert_close("last_hidden_state (fp16 weights)", &got, &g.get("last_hidden_state_from_fp16_weights").f, 2e-5);
    // and it is a different model than the fp32 one (README: up to 2.6e-3 apart)
    let d = max_abs_diff(&got, &g.get("last_hidden_state").f);
    assert!(d > 1e-5 && d < 6e-2, "fp16 vs fp32 weights differ by {d}");
}

#[test]
fn textual_inversion_files_give_the_embeddings_loaded_golden() {
    let g = read_golden(&tiny_sd1().join("goldens/embeddings_loaded.safetensors"));
    let emb_dir = fixtures().join("embeddings");
    let cases = [
        ("learned_embeds.safetensors", None, "1vec"),
        ("learned_embeds_2vec.safetensors", None, "2vec"),
        ("chelsea-a1111-1vec.safetensors", Some("<chelsea>"), "1vec"),
        ("chelsea-a1111-2vec.safetensors", Some("<chelsea>"), "2vec"),
    ];
    for (file, token, which) in cases {
        let mut enc = load_prompt_encoder(&tiny_sd1(), None, &Device::flex()).unwrap();
        let emb = read_embedding_file(&emb_dir.join(file), token).unwrap();
        assert_eq!(emb.token, "<chelsea>", "{file}");
        let ids = enc.add_embedding(file, &emb).unwrap();
        assert_eq!(ids[0], 49408, "{file}");
        let (toks, out) = enc.encode(&["a photo of a <chelsea>"], false).unwrap();
        let want_ids: Vec<u32> = g.get(&format!("input_ids_{which}")).i.iter().map(|&i| i as u32).collect();
        assert_eq!(toks[0].input_ids, want_ids, "{file}");
        assert_close(file, &f32s(out.last_hidden_state), &g.get(&format!("prompt_embeds_{which}")).f, 2e-5);
    }
}

#[test]
fn a1111_file_without_token_uses_the_file_stem() {
    let emb = read_embedding_file(&fixtures().join("embeddings/chelsea-a1111-2vec.safetensors"), None).unwrap();
    assert_eq!(emb.token, "chelsea-a1111-2vec");
    assert_eq!((emb.n, emb.dim), (2, 32));
}

#[test]
fn embedding_of_the_wrong_width_is_refused_naming_both_widths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.safetensors");
    write_safetensors(&path, &[f32_blob("<wide>", &[1, 768], &vec![0.1; 768])], None);
    let mut enc = load_prompt_encoder(&tiny_sd1(), None, &Device::flex()).unwrap();
    let emb = read_embedding_file(&path, None).unwrap();
    let err = enc.add_embedding("wide.safetensors", &emb).unwrap_err().to_string();
    assert!(err.contains("768") && err.contains("32"), "{err}");
}
