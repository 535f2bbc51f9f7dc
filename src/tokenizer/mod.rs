//! CLIP BPE tokenizer: a port of transformers 5 `CLIPTokenizer` (tokenizers backend) as used by
//! diffusers' Stable Diffusion pipelines, plus diffusers' textual-inversion helpers
//! (`add_tokens`, `TextualInversionLoaderMixin.maybe_convert_prompt`).
//!
//! Pipeline for a prompt (tokenizers' `Tokenizer::encode`):
//! 1. split out non-normalised added/special tokens on the raw text;
//! 2. normalise each remaining piece (NFC, whitespace runs -> one space, lowercase) and split out
//!    the normalised added tokens;
//! 3. pre-tokenise the rest with the CLIP regex (only matches kept), byte-level encode each piece;
//! 4. BPE each piece with `</w>` appended to its last symbol;
//! 5. wrap in BOS ... EOS (and for the pipeline, truncate to `model_max_length` and pad).
//!
//! No file system is needed in the core path ([`ClipTokenizer::from_files`]); [`ClipTokenizer::from_dir`]
//! is a native convenience.

mod added;
mod tokenized;
mod bpe;
mod files;
mod normalize;

use std::collections::{HashMap, HashSet};
use std::path::Path;

pub use added::AddedToken;
pub use tokenized::Tokenized;
pub use crate::error::TokenizerError;
pub use files::TokenizerFiles;

use added::{MatchSet, Piece, StripRules};
use bpe::Bpe;
use files::Config;
use normalize::TextPipeline;

/// Token ids and the matching token strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token strings (`a</w>`, `<|startoftext|>`, ...); for an added token, the text it matched.
    pub tokens: Vec<String>,
}

impl Encoding {
    fn push(&mut self, id: u32, token: String) {
        self.ids.push(id);
        self.tokens.push(token);
    }
}

/// A CLIP BPE tokenizer reproducing transformers' `CLIPTokenizer` ids.
#[derive(Clone, Debug)]
pub struct ClipTokenizer {
    bpe: Bpe,
    text: TextPipeline,
    rules: StripRules,
    /// Added tokens in registration order (the first registration of a content wins).
    added: Vec<AddedToken>,
    /// content -> id for added tokens.
    added_ids: HashMap<String, u32>,
    /// id -> index into `added`.
    added_by_id: HashMap<u32, usize>,
    /// Patterns of non-normalised added tokens (matched on raw text).
    raw_set: MatchSet,
    /// Patterns of normalised added tokens (matched on normalised text).
    norm_set: MatchSet,
    bos: (u32, String),
    eos: (u32, String),
    pad: (u32, String),
    unk_id: u32,
    model_max_length: usize,
}

impl ClipTokenizer {
    /// Builds a tokenizer from the text of a tokenizer folder's files.
    pub fn from_files(files: &TokenizerFiles) -> Result<Self, TokenizerError> {
        let config = Config::parse(files)?;
        let bpe = Bpe::from_strings(&files.vocab_json, &files.merges_txt)?;
        let mut tok = Self {
            bpe,
            text: TextPipeline::new(config.do_lower_case),
            rules: StripRules::new(),
            added: Vec::new(),
            added_ids: HashMap::new(),
            added_by_id: HashMap::new(),
            raw_set: MatchSet::default(),
            norm_set: MatchSet::default(),
            bos: (0, String::new()),
            eos: (0, String::new()),
            pad: (0, String::new()),
            unk_id: 0,
            model_max_length: config.model_max_length,
        };
        for (id, token) in &config.added_tokens_decoder {
            tok.register(token.clone(), Some(*id));
        }
        let mut special =
            |role: &'static str, token: &AddedToken| -> Result<(u32, String), TokenizerError> {
                if tok.token_to_id(&token.content).is_none() {
                    return Err(TokenizerError::SpecialTokenNotInVocab {
                        role,
                        token: token.content.clone(),
                    });
                }
                let id = tok.register(token.clone(), None);
                Ok((id, token.content.clone()))
            };
        let bos = special("bos", &config.bos)?;
        let eos = special("eos", &config.eos)?;
        let unk = special("unk", &config.unk)?;
        let pad = special("pad", &config.pad)?;
        for token in &config.additional_special {
            tok.register(token.clone(), None);
        }
        tok.bos = bos;
        tok.eos = eos;
        tok.pad = pad;
        tok.unk_id = unk.0;
        tok.bpe.set_unk(Some(unk.0));
        Ok(tok)
    }

    /// Reads the tokenizer folder `dir` (see [`TokenizerFiles::from_dir`]) and builds the tokenizer.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_files(&TokenizerFiles::from_dir(dir)?)
    }

    /// The id tokenizers gives a brand-new added token: the vocab size, or one past the largest
    /// added id when that is already beyond the vocab.
    fn next_id(&self) -> u32 {
        let vocab_size = self.bpe.vocab.len() as u32;
        match self.added_ids.values().max() {
            Some(&max) if max >= vocab_size || vocab_size == 0 => max + 1,
            _ => vocab_size,
        }
    }

    /// Registers an added token (first registration of a content wins) and returns its id.
    fn register(&mut self, token: AddedToken, id: Option<u32>) -> u32 {
        if let Some(&existing) = self.added_ids.get(&token.content) {
            return existing;
        }
        let id = id
            .or_else(|| self.token_to_id(&token.content))
            .unwrap_or_else(|| self.next_id());
        let index = self.added.len();
        if token.normalized {
            self.norm_set
                .insert(self.text.normalize(&token.content), id, index);
        } else {
            self.raw_set.insert(token.content.clone(), id, index);
        }
        self.added_ids.insert(token.content.clone(), id);
        self.added_by_id.entry(id).or_insert(index);
        self.added.push(token);
        id
    }

    /// Tokenizes without BOS/EOS (transformers' `tokenize` + `convert_tokens_to_ids`).
    pub fn tokenize(&self, prompt: &str) -> Encoding {
        let mut pairs: Vec<(u32, String)> = Vec::new();
        for piece in added::split(prompt, &self.raw_set, &self.added, &self.rules) {
            match piece {
                Piece::Token(id, text) => pairs.push((id, text.to_string())),
                Piece::Text(text) => {
                    let normalized = self.text.normalize(text);
                    for piece in added::split(&normalized, &self.norm_set, &self.added, &self.rules)
                    {
                        match piece {
                            Piece::Token(id, text) => pairs.push((id, text.to_string())),
                            Piece::Text(text) => {
                                for word in self.text.pre_tokenize(text) {
                                    self.bpe.encode_word(&word, &mut pairs);
                                }
                            }
                        }
                    }
                }
            }
        }
        let (ids, tokens) = pairs.into_iter().unzip();
        Encoding { ids, tokens }
    }

    /// BOS + tokens + EOS, untruncated (`tokenizer(prompt).input_ids`).
    pub fn encode(&self, prompt: &str) -> Encoding {
        let body = self.tokenize(prompt);
        let mut out = Encoding::default();
        out.push(self.bos.0, self.bos.1.clone());
        out.ids.extend(body.ids);
        out.tokens.extend(body.tokens);
        out.push(self.eos.0, self.eos.1.clone());
        out
    }

    /// What the Stable Diffusion pipeline feeds the text encoder:
    /// `tokenizer(prompt, padding="max_length", max_length=model_max_length, truncation=True)`,
    /// i.e. BOS + the first `model_max_length - 2` tokens + EOS, padded with the pad id.
    pub fn encode_padded(&self, prompt: &str) -> Encoding {
        let max = self.model_max_length;
        let mut body = self.tokenize(prompt);
        let keep = max.saturating_sub(2);
        body.ids.truncate(keep);
        body.tokens.truncate(keep);
        let mut out = Encoding::default();
        out.push(self.bos.0, self.bos.1.clone());
        out.ids.extend(body.ids);
        out.tokens.extend(body.tokens);
        out.push(self.eos.0, self.eos.1.clone());
        while out.ids.len() < max {
            out.push(self.pad.0, self.pad.1.clone());
        }
        out
    }

    /// Adds new (non-special, normalised) tokens, as `tokenizer.add_tokens([...])` does for
    /// textual inversion; returns their ids (`len()`, `len() + 1`, ...).
    ///
    /// Fails without adding anything if a token is empty, already exists (in the vocab or as an
    /// added token; diffusers refuses this too) or is listed twice.
    pub fn add_tokens(&mut self, tokens: &[&str]) -> Result<Vec<u32>, TokenizerError> {
        let mut seen = HashSet::new();
        for &token in tokens {
            if token.is_empty() {
                return Err(TokenizerError::EmptyToken);
            }
            if let Some(id) = self.token_to_id(token) {
                return Err(TokenizerError::TokenExists {
                    token: token.to_string(),
                    id,
                });
            }
            if !seen.insert(token) {
                return Err(TokenizerError::DuplicateToken {
                    token: token.to_string(),
                });
            }
        }
        Ok(tokens
            .iter()
            .map(|&t| self.register(AddedToken::new(t, false), None))
            .collect())
    }

    /// diffusers' `TextualInversionLoaderMixin.maybe_convert_prompt`: for every distinct added
    /// token `T` produced by tokenizing `prompt`, replaces each literal occurrence of `T` in the
    /// prompt by `T T_1 ... T_k`, where `T_1..T_k` are the consecutive `T_i` added tokens.
    pub fn maybe_convert_prompt(&self, prompt: &str) -> String {
        let tokens = self.tokenize(prompt).tokens;
        let mut seen = HashSet::new();
        let mut prompt = prompt.to_string();
        for token in tokens {
            if !seen.insert(token.clone()) || !self.added_ids.contains_key(&token) {
                continue;
            }
            let mut replacement = token.clone();
            let mut i = 1;
            loop {
                let next = format!("{token}_{i}");
                if !self.added_ids.contains_key(&next) {
                    break;
                }
                replacement.push(' ');
                replacement.push_str(&next);
                i += 1;
            }
            if replacement != token {
                prompt = prompt.replace(&token, &replacement);
            }
        }
        prompt
    }

    /// Id of a token string (added tokens first, then the BPE vocab).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_ids
            .get(token)
            .or_else(|| self.bpe.vocab.get(token))
            .copied()
    }

    /// Token string of an id (added tokens first, then the BPE vocab).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        match self.added_by_id.get(&id) {
            Some(&index) => Some(self.added[index].content.as_str()),
            None => self.bpe.vocab_r.get(&id).map(String::as_str),
        }
    }

    /// Number of distinct tokens: BPE vocab plus added tokens not already in it (`len(tokenizer)`).
    pub fn len(&self) -> usize {
        self.bpe.vocab.len()
            + self
                .added
                .iter()
                .filter(|t| !self.bpe.vocab.contains_key(&t.content))
                .count()
    }

    /// Always false for a loaded tokenizer (kept for API symmetry with `len`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The added and special tokens with their ids, in registration order.
    pub fn added_tokens(&self) -> impl Iterator<Item = (u32, &AddedToken)> + '_ {
        self.added.iter().map(|t| (self.added_ids[&t.content], t))
    }

    /// Beginning-of-text id (`<|startoftext|>`, 49406 for CLIP).
    pub fn bos_id(&self) -> u32 {
        self.bos.0
    }

    /// End-of-text id (`<|endoftext|>`, 49407 for CLIP).
    pub fn eos_id(&self) -> u32 {
        self.eos.0
    }

    /// Padding id: 49407 (`<|endoftext|>`) for SD 1.x, 0 (`!`) for SD 2.x.
    pub fn pad_id(&self) -> u32 {
        self.pad.0
    }

    /// Id used for characters missing from the vocab.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Sequence length of the text encoder (`model_max_length`, 77 for CLIP).
    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }
}
