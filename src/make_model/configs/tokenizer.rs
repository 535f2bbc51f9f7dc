//! `tokenizer/`: the CLIP BPE (`vocab.json`, `merges.txt`) every SD 1.x/2.x repository ships,
//! taken from the fixture model (the same files as openai/clip-vit-large-patch14), and the two
//! configs. SD 1.x pads with `<|endoftext|>`; SD 2.x's `special_tokens_map.json` pads with `!`
//! (OpenCLIP's padding, id 0) while its `tokenizer_config.json` still names `<|endoftext|>`:
//! transformers lets the map win, and so does this library.

use serde_json::{Value, json};

use super::super::Arch;

pub const VOCAB_JSON: &str = include_str!("../../../tests/fixtures/tiny-sd1/tokenizer/vocab.json");
pub const MERGES_TXT: &str = include_str!("../../../tests/fixtures/tiny-sd1/tokenizer/merges.txt");
/// runwayml/stable-diffusion-v1-5's `tokenizer/special_tokens_map.json`.
const SD1_SPECIAL_TOKENS_MAP: &str = include_str!("../../../tests/fixtures/tiny-sd1/tokenizer/special_tokens_map.json");
/// runwayml/stable-diffusion-v1-5's `tokenizer/tokenizer_config.json`.
const SD1_TOKENIZER_CONFIG: &str = include_str!("../../../tests/fixtures/tiny-sd1/tokenizer/tokenizer_config.json");

fn token(content: &str) -> Value {
    json!({"content": content, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false})
}

fn added_token(content: &str) -> Value {
    json!({"__type": "AddedToken", "content": content, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false})
}

/// stabilityai/stable-diffusion-2-1's `tokenizer/special_tokens_map.json`: pads with `!`.
fn sd2_special_tokens_map() -> Value {
    json!({
        "bos_token": token("<|startoftext|>"),
        "eos_token": token("<|endoftext|>"),
        "pad_token": "!",
        "unk_token": token("<|endoftext|>")
    })
}

/// stabilityai/stable-diffusion-2-1's `tokenizer/tokenizer_config.json`.
fn sd2_tokenizer_config(name_or_path: &str) -> Value {
    json!({
        "add_prefix_space": false,
        "bos_token": added_token("<|startoftext|>"),
        "do_lower_case": true,
        "eos_token": added_token("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": name_or_path,
        "pad_token": "<|endoftext|>",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added_token("<|endoftext|>")
    })
}

/// The four files of `tokenizer/`: `(file name, contents)`.
pub fn files(arch: Arch) -> Vec<(&'static str, String)> {
    let pretty = |v: Value| serde_json::to_string_pretty(&v).expect("json") + "\n";
    let (map, config) = match arch {
        Arch::Sd15 | Arch::BkSdmSmall | Arch::BkSdmTiny => (SD1_SPECIAL_TOKENS_MAP.to_string(), SD1_TOKENIZER_CONFIG.to_string()),
        Arch::Sd21 => (pretty(sd2_special_tokens_map()), pretty(sd2_tokenizer_config("hf-models/stable-diffusion-v2-768x768/tokenizer"))),
        Arch::Sd21Base => (pretty(sd2_special_tokens_map()), pretty(sd2_tokenizer_config("hf-models/stable-diffusion-v2-base/tokenizer"))),
        Arch::SdTurbo => (pretty(sd2_special_tokens_map()), pretty(sd2_tokenizer_config("/home/patrick/sd-turbo/tokenizer"))),
    };
    vec![
        ("merges.txt", MERGES_TXT.to_string()),
        ("special_tokens_map.json", map),
        ("tokenizer_config.json", config),
        ("vocab.json", VOCAB_JSON.to_string()),
    ]
}
