//! Golden tests of the CLIP tokenizer against transformers 5 `CLIPTokenizer`
//! (`tests/fixtures/tokenizer.json`, see shared/fixtures/README.md "Tokenizer"), plus SD 2.x
//! (`pad_token "!"`) and error cases built in memory from the fixture vocab/merges.

use std::path::PathBuf;

use pseudoword::tokenizer::{ClipTokenizer, TokenizerError, TokenizerFiles};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tokenizer_dir() -> PathBuf {
    fixtures().join("tiny-sd1/tokenizer")
}

fn goldens() -> Value {
    let text = std::fs::read_to_string(fixtures().join("tokenizer.json"))
        .expect("read tests/fixtures/tokenizer.json");
    serde_json::from_str(&text).expect("parse tokenizer.json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("token list")
        .iter()
        .map(|x| x.as_str().expect("token").to_string())
        .collect()
}

fn sd1() -> ClipTokenizer {
    ClipTokenizer::from_dir(&tokenizer_dir()).expect("load fixture tokenizer")
}

/// Fixture vocab/merges with an SD 2.x style config (`pad_token "!"`).
fn sd2_files() -> TokenizerFiles {
    let mut files = TokenizerFiles::from_dir(&tokenizer_dir()).unwrap();
    files.tokenizer_config_json = Some(
        r#"{"add_prefix_space": false,
            "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
            "do_lower_case": true,
            "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
            "errors": "replace", "model_max_length": 77, "pad_token": "<|endoftext|>",
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false}}"#
            .to_string(),
    );
    files.special_tokens_map_json = Some(
        r#"{"bos_token": {"content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
            "eos_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
            "pad_token": "!",
            "unk_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false}}"#
            .to_string(),
    );
    files
}

#[test]
fn golden_prompts_match_transformers() {
    let g = goldens();
    let tok = sd1();
    assert_eq!(tok.len() as u64, g["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos_id() as u64, g["bos_token_id"].as_u64().unwrap());
    assert_eq!(tok.eos_id() as u64, g["eos_token_id"].as_u64().unwrap());
    assert_eq!(tok.pad_id() as u64, g["pad_token_id"].as_u64().unwrap());
    assert_eq!(
        tok.model_max_length() as u64,
        g["model_max_length"].as_u64().unwrap()
    );
    let placeholder = g["placeholder_token"].as_str().unwrap();

    let mut single = tok.clone();
    assert_eq!(single.add_tokens(&[placeholder]).unwrap(), [49408]);
    let mut three = tok.clone();
    let names = [
        placeholder.to_string(),
        format!("{placeholder}_1"),
        format!("{placeholder}_2"),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(three.add_tokens(&names).unwrap(), [49408, 49409, 49410]);
    assert_eq!(three.len(), 49411);

    let prompts = g["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 43);
    let mut checked_variants = 0;
    for p in prompts {
        let prompt = p["prompt"].as_str().unwrap();
        let enc = tok.encode(prompt);
        assert_eq!(enc.ids, ids(&p["ids"]), "ids of {prompt:?}");
        assert_eq!(enc.tokens, strings(&p["tokens"]), "tokens of {prompt:?}");
        let padded = tok.encode_padded(prompt);
        assert_eq!(
            padded.ids,
            ids(&p["input_ids_77"]),
            "input_ids_77 of {prompt:?}"
        );
        assert_eq!(padded.tokens.len(), 77);

        for (key, variant) in [("single_vector", &single), ("three_vectors", &three)] {
            let Some(v) = p.get(key) else { continue };
            let converted = variant.maybe_convert_prompt(prompt);
            assert_eq!(
                converted,
                v["converted_prompt"].as_str().unwrap(),
                "{key} converted prompt of {prompt:?}"
            );
            assert_eq!(
                variant.encode(&converted).ids,
                ids(&v["ids"]),
                "{key} ids of {prompt:?}"
            );
            assert_eq!(
                variant.encode_padded(&converted).ids,
                ids(&v["input_ids_77"]),
                "{key} input_ids_77 of {prompt:?}"
            );
            checked_variants += 1;
        }
    }
    assert_eq!(checked_variants, 10);
}

#[test]
fn added_tokens_decoder_config_gives_same_ids() {
    let mut files = TokenizerFiles::from_dir(&tokenizer_dir()).unwrap();
    files.special_tokens_map_json = None;
    files.tokenizer_config_json = Some(
        r#"{"added_tokens_decoder": {
              "49406": {"content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false, "special": true},
              "49407": {"content": "<|endoftext|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}},
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>", "do_lower_case": true, "model_max_length": 1000000000000000019884624838656}"#
            .to_string(),
    );
    let tok = ClipTokenizer::from_files(&files).unwrap();
    assert_eq!(
        tok.model_max_length(),
        77,
        "huge model_max_length falls back to 77"
    );
    assert_eq!(tok.len(), 49408);
    let reference = sd1();
    for prompt in [
        "a photo of a cat",
        "<|startoftext|> special <|endoftext|> tokens in text",
        "hello!!",
    ] {
        assert_eq!(
            tok.encode_padded(prompt),
            reference.encode_padded(prompt),
            "{prompt:?}"
        );
    }
}

#[test]
fn sd2_pad_token_is_bang_and_splits_out() {
    let sd2 = ClipTokenizer::from_files(&sd2_files()).unwrap();
    let sd1 = sd1();
    assert_eq!(sd2.pad_id(), 0);
    assert_eq!(sd2.bos_id(), 49406);
    assert_eq!(sd2.eos_id(), 49407);
    assert_eq!(sd2.len(), 49408);
    let hello = sd1.token_to_id("hello</w>").unwrap();

    // SD1: `!!` is one BPE piece.
    let e1 = sd1.encode("hello!!");
    assert_eq!(
        e1.tokens,
        ["<|startoftext|>", "hello</w>", "!!</w>", "<|endoftext|>"]
    );

    // SD2: `!` is a special token, split out before BPE.
    let e2 = sd2.encode("hello!!");
    assert_eq!(e2.ids, [49406, hello, 0, 0, 49407]);
    assert_eq!(
        e2.tokens,
        ["<|startoftext|>", "hello</w>", "!", "!", "<|endoftext|>"]
    );

    let padded = sd2.encode_padded("a photo of a cat");
    assert_eq!(padded.ids.len(), 77);
    assert_eq!(&padded.ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(padded.ids[7..].iter().all(|&id| id == 0));

    // Prompts without `!` tokenize as in SD1.
    let g = goldens();
    for p in g["prompts"].as_array().unwrap() {
        let prompt = p["prompt"].as_str().unwrap();
        if !prompt.contains('!') {
            assert_eq!(sd2.encode(prompt).ids, ids(&p["ids"]), "{prompt:?}");
        }
    }
}

#[test]
fn add_existing_token_is_refused() {
    let mut tok = sd1();
    let err = tok.add_tokens(&["cat</w>"]).unwrap_err();
    assert!(
        matches!(err, TokenizerError::TokenExists { id: 2368, .. }),
        "{err}"
    );
    let err = tok.add_tokens(&["<|endoftext|>"]).unwrap_err();
    assert!(
        matches!(err, TokenizerError::TokenExists { id: 49407, .. }),
        "{err}"
    );

    assert_eq!(tok.add_tokens(&["<chelsea>"]).unwrap(), [49408]);
    let err = tok.add_tokens(&["<chelsea>_1", "<chelsea>"]).unwrap_err();
    assert!(
        matches!(err, TokenizerError::TokenExists { id: 49408, .. }),
        "{err}"
    );
    assert_eq!(tok.len(), 49409, "a refused call adds nothing");
    assert!(matches!(
        tok.add_tokens(&["<new>", "<new>"]),
        Err(TokenizerError::DuplicateToken { .. })
    ));
    assert!(matches!(
        tok.add_tokens(&[""]),
        Err(TokenizerError::EmptyToken)
    ));

    assert_eq!(tok.token_to_id("<chelsea>"), Some(49408));
    assert_eq!(tok.id_to_token(49408), Some("<chelsea>"));
    assert_eq!(tok.id_to_token(2368), Some("cat</w>"));
    assert_eq!(tok.id_to_token(49406), Some("<|startoftext|>"));
}

#[test]
fn bad_files_give_typed_errors() {
    let good = TokenizerFiles::from_dir(&tokenizer_dir()).unwrap();

    let mut files = good.clone();
    files.merges_txt = "#version: 0.2\ni n\nt h\nthis line is bad\ne r\n".to_string();
    let err = ClipTokenizer::from_files(&files).unwrap_err();
    assert!(
        matches!(err, TokenizerError::BadMerge { line: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("merges.txt line 4"), "{err}");

    let mut files = good.clone();
    files.merges_txt = "#version: 0.2\nqqqq zzzz\n".to_string();
    let err = ClipTokenizer::from_files(&files).unwrap_err();
    assert!(
        matches!(err, TokenizerError::MergeOutOfVocab { line: 2, .. }),
        "{err}"
    );

    let mut files = good.clone();
    files.vocab_json = "{not json".to_string();
    let err = ClipTokenizer::from_files(&files).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::Json {
                file: "vocab.json",
                ..
            }
        ),
        "{err}"
    );

    let mut files = good.clone();
    files.special_tokens_map_json = Some(r#"{"pad_token": "<pad>"}"#.to_string());
    let err = ClipTokenizer::from_files(&files).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::SpecialTokenNotInVocab { role: "pad", .. }
        ),
        "{err}"
    );

    let err = ClipTokenizer::from_dir(&fixtures().join("no-such-folder")).unwrap_err();
    assert!(matches!(err, TokenizerError::MissingFile { .. }), "{err}");
}

#[test]
fn long_prompts_truncate_and_defaults_apply() {
    // No configs at all: CLIP defaults (77, lowercase, <|startoftext|>/<|endoftext|>).
    let mut files = TokenizerFiles::from_dir(&tokenizer_dir()).unwrap();
    files.tokenizer_config_json = None;
    files.special_tokens_map_json = None;
    let tok = ClipTokenizer::from_files(&files).unwrap();
    assert_eq!(
        (
            tok.bos_id(),
            tok.eos_id(),
            tok.pad_id(),
            tok.model_max_length()
        ),
        (49406, 49407, 49407, 77)
    );

    let prompt = "cat ".repeat(5000);
    let enc = tok.encode(&prompt);
    assert_eq!(enc.ids.len(), 5002);
    let padded = tok.encode_padded(&prompt);
    assert_eq!(padded.ids.len(), 77);
    assert_eq!(padded.ids[0], 49406);
    assert_eq!(padded.ids[76], 49407);
    assert!(padded.ids[1..76].iter().all(|&id| id == 2368));

    // One very long word: BPE stays fast (no quadratic blow-up).
    let word = "ab".repeat(20000);
    let enc = tok.encode(&word);
    assert!(enc.ids.len() > 2);
}
