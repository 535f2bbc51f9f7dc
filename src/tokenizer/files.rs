//! The files of a Hugging Face CLIP tokenizer folder (`vocab.json`, `merges.txt`,
//! `tokenizer_config.json`, `special_tokens_map.json`) and the parts of the two configs that
//! transformers' `CLIPTokenizer.from_pretrained` uses: special tokens, `added_tokens_decoder`,
//! `model_max_length`, `do_lower_case`.

use std::path::Path;

use serde_json::{Map, Value};

use super::added::AddedToken;
use crate::error::TokenizerError;

/// The raw text of a tokenizer folder's files, so that a tokenizer can be built without a file
/// system (in the browser the files are fetched and handed over as strings).
#[derive(Clone, Debug, Default)]
pub struct TokenizerFiles {
    /// `vocab.json`: token string -> id.
    pub vocab_json: String,
    /// `merges.txt`: optional `#version` header, then one `left right` merge per line.
    pub merges_txt: String,
    /// `tokenizer_config.json`, if the folder has one.
    pub tokenizer_config_json: Option<String>,
    /// `special_tokens_map.json`, if the folder has one (its entries win over the config's).
    pub special_tokens_map_json: Option<String>,
}

impl TokenizerFiles {
    /// Reads `vocab.json` and `merges.txt` (required) and `tokenizer_config.json` and
    /// `special_tokens_map.json` (optional) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        Ok(Self {
            vocab_json: read(dir, "vocab.json", true)?.unwrap_or_default(),
            merges_txt: read(dir, "merges.txt", true)?.unwrap_or_default(),
            tokenizer_config_json: read(dir, "tokenizer_config.json", false)?,
            special_tokens_map_json: read(dir, "special_tokens_map.json", false)?,
        })
    }

    /// Sets `pad_token` in `special_tokens_map.json` (creating it when absent): a single-file
    /// checkpoint's tokenizer pads with `<|endoftext|>` (SD 1) or `!` (SD 2) whatever the BPE
    /// files it is paired with say.
    pub fn set_pad_token(&mut self, pad: &str) {
        let mut map: serde_json::Value = self
            .special_tokens_map_json
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        map["pad_token"] = pad.into();
        self.special_tokens_map_json = Some(map.to_string());
    }
}

fn read(dir: &Path, name: &str, required: bool) -> Result<Option<String>, TokenizerError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if required {
                Err(TokenizerError::MissingFile {
                    path: path.display().to_string(),
                })
            } else {
                Ok(None)
            }
        }
        Err(source) => Err(TokenizerError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Default `model_max_length` of CLIP text encoders.
pub(crate) const DEFAULT_MAX_LENGTH: usize = 77;
/// Larger configured values (transformers writes e.g. 1e30 for "unlimited") fall back to the default.
const MAX_SANE_MAX_LENGTH: f64 = 1024.0;

/// The settings read from the two JSON configs.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) model_max_length: usize,
    pub(crate) do_lower_case: bool,
    pub(crate) bos: AddedToken,
    pub(crate) eos: AddedToken,
    pub(crate) unk: AddedToken,
    pub(crate) pad: AddedToken,
    /// `additional_special_tokens` (special map wins).
    pub(crate) additional_special: Vec<AddedToken>,
    /// `added_tokens_decoder` of tokenizer_config.json, sorted by id.
    pub(crate) added_tokens_decoder: Vec<(u32, AddedToken)>,
}

fn parse_object(
    text: Option<&str>,
    file: &'static str,
) -> Result<Map<String, Value>, TokenizerError> {
    let Some(text) = text else {
        return Ok(Map::new());
    };
    serde_json::from_str(text).map_err(|source| TokenizerError::Json {
        file,
        expected: "a JSON object",
        source,
    })
}

/// A special token value: a plain string, or an `AddedToken` object `{"content": ..., flags}`.
/// `null` (or absence) gives `None`.
fn token_value(
    value: &Value,
    file: &'static str,
    field: &str,
    special: bool,
) -> Result<Option<AddedToken>, TokenizerError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(AddedToken::new(s.clone(), special))),
        Value::Object(obj) => {
            let content = obj.get("content").and_then(Value::as_str).ok_or_else(|| {
                TokenizerError::InvalidConfig {
                    file,
                    field: field.to_string(),
                    reason: "an AddedToken object needs a string \"content\"".to_string(),
                }
            })?;
            let special = obj
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or(special);
            let flag = |name: &str, default: bool| {
                obj.get(name).and_then(Value::as_bool).unwrap_or(default)
            };
            Ok(Some(AddedToken {
                content: content.to_string(),
                single_word: flag("single_word", false),
                lstrip: flag("lstrip", false),
                rstrip: flag("rstrip", false),
                normalized: flag("normalized", !special),
                special,
            }))
        }
        _ => Err(TokenizerError::InvalidConfig {
            file,
            field: field.to_string(),
            reason: format!("expected a string or an object with \"content\", got {value}"),
        }),
    }
}

impl Config {
    /// Reads the configs; `special_tokens_map.json` entries override `tokenizer_config.json` ones.
    pub(crate) fn parse(files: &TokenizerFiles) -> Result<Self, TokenizerError> {
        const CFG: &str = "tokenizer_config.json";
        const MAP: &str = "special_tokens_map.json";
        let cfg = parse_object(files.tokenizer_config_json.as_deref(), CFG)?;
        let map = parse_object(files.special_tokens_map_json.as_deref(), MAP)?;

        let special = |field: &str, default: &str| -> Result<AddedToken, TokenizerError> {
            // A missing or null entry falls through to the next source.
            for (file, source) in [(MAP, &map), (CFG, &cfg)] {
                if let Some(v) = source.get(field)
                    && let Some(t) = token_value(v, file, field, true)?
                {
                    return Ok(t);
                }
            }
            Ok(AddedToken::new(default, true))
        };
        let bos = special("bos_token", "<|startoftext|>")?;
        let eos = special("eos_token", "<|endoftext|>")?;
        let unk = special("unk_token", "<|endoftext|>")?;
        let pad = special("pad_token", "<|endoftext|>")?;

        let mut additional_special = Vec::new();
        let (file, list) = match (
            map.get("additional_special_tokens"),
            cfg.get("additional_special_tokens"),
        ) {
            (Some(v), _) => (MAP, Some(v)),
            (None, v) => (CFG, v),
        };
        match list {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    if let Some(t) = token_value(item, file, "additional_special_tokens", true)? {
                        additional_special.push(t);
                    }
                }
            }
            Some(other) => {
                return Err(TokenizerError::InvalidConfig {
                    file,
                    field: "additional_special_tokens".to_string(),
                    reason: format!("expected a list, got {other}"),
                });
            }
        }

        let mut added_tokens_decoder = Vec::new();
        match cfg.get("added_tokens_decoder") {
            None | Some(Value::Null) => {}
            Some(Value::Object(entries)) => {
                for (key, value) in entries {
                    let field = format!("added_tokens_decoder.{key}");
                    let id: u32 = key.parse().map_err(|_| TokenizerError::InvalidConfig {
                        file: CFG,
                        field: field.clone(),
                        reason: "keys must be integer token ids".to_string(),
                    })?;
                    // Entries without a "special" flag are ordinary added tokens.
                    if let Some(t) = token_value(value, CFG, &field, false)? {
                        added_tokens_decoder.push((id, t));
                    }
                }
            }
            Some(other) => {
                return Err(TokenizerError::InvalidConfig {
                    file: CFG,
                    field: "added_tokens_decoder".to_string(),
                    reason: format!("expected an object id -> AddedToken, got {other}"),
                });
            }
        }
        added_tokens_decoder.sort_by_key(|(id, _)| *id);

        let model_max_length = match cfg.get("model_max_length").and_then(Value::as_f64) {
            Some(n) if (2.0..=MAX_SANE_MAX_LENGTH).contains(&n) => n as usize,
            _ => DEFAULT_MAX_LENGTH,
        };
        let do_lower_case = cfg
            .get("do_lower_case")
            .and_then(Value::as_bool)
            .unwrap_or(true);

        Ok(Self {
            model_max_length,
            do_lower_case,
            bos,
            eos,
            unk,
            pad,
            additional_special,
            added_tokens_decoder,
        })
    }
}
