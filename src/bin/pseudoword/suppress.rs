//! SuppressEOT options of `pseudoword encode` and `pseudoword generate` (`--suppress WORDS`):
//! the SWR embedding as an extra tensor, and two-branch generation writing the suppressed image.

use burn::tensor::Tensor;
use clap::Args;
use pseudoword::error::Error;
use pseudoword::pipeline::{PromptEncoder, Tokenized};
use pseudoword::suppress::{SuppressParams, locate_words, soft_weighted_regularization};
use safetensors::Dtype;

use crate::{f32_bytes, read_f32};

/// `encode --suppress`.
#[derive(Args, Clone, Debug)]
pub struct EncodeSuppress {
    /// Words of the prompt to suppress (comma-separated groups): also writes `suppressed`
    /// F32 [1, 77, D], the soft-weighted-regularised embedding (SuppressEOT).
    #[arg(long, value_name = "WORDS")]
    pub suppress: Option<String>,
    /// SWR strength alpha in s * exp(-alpha * s).
    #[arg(long, default_value_t = 1.0, requires = "suppress")]
    pub suppress_alpha: f64,
}

/// Adds `suppressed` (and `suppress_positions`, I64 [K]: the rows SWR rewrote) to the `encode`
/// outputs; returns the JSON fields to print.
pub fn encode_outputs(
    enc: &PromptEncoder,
    tokenized: &Tokenized,
    c: Tensor<3>,
    a: &EncodeSuppress,
    blobs: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
) -> Result<Option<serde_json::Value>, Error> {
    let Some(words) = &a.suppress else { return Ok(None) };
    let tokens = locate_words(&enc.tokenizer, tokenized, words)?;
    let dims = c.dims();
    let swr = pollster::block_on(soft_weighted_regularization(c, &tokens, a.suppress_alpha))?;
    blobs.push(("suppressed".into(), Dtype::F32, dims.to_vec(), f32_bytes(&read_f32(swr)?)));
    let rows = tokens.swr_rows(dims[1]);
    blobs.push(("suppress_positions".into(), Dtype::I64, vec![rows.len()], rows.iter().flat_map(|&r| (r as i64).to_le_bytes()).collect()));
    Ok(Some(serde_json::json!({ "words": words, "target_positions": tokens.target, "n": tokens.n, "alpha": a.suppress_alpha })))
}

/// `generate --suppress`.
#[derive(Args, Clone, Debug)]
pub struct GenerateSuppress {
    /// Words of the prompt to suppress (SuppressEOT; comma-separated groups). `--out` then gets
    /// the suppressed image and NAME-original.png the unsuppressed one (same seed).
    #[arg(long, value_name = "WORDS")]
    pub suppress: Option<String>,
    /// SWR strength alpha in s * exp(-alpha * s).
    #[arg(long, default_value_t = 1.0, requires = "suppress")]
    pub suppress_alpha: f64,
    /// Fraction of the steps before suppression starts.
    #[arg(long, default_value_t = 0.2, requires = "suppress")]
    pub suppress_start: f64,
    /// Fraction of the steps where the embedding optimisation (ITO) ends.
    #[arg(long, default_value_t = 0.4, requires = "suppress")]
    pub suppress_opt_end: f64,
    /// ITO iterations per step.
    #[arg(long, default_value_t = 10, requires = "suppress")]
    pub suppress_opt_iters: usize,
    /// ITO step scale [default: 20 for generated images, 5 for photo edits].
    #[arg(long, requires = "suppress")]
    pub suppress_opt_scale: Option<f64>,
    /// SWR only, no ITO (much cheaper).
    #[arg(long, requires = "suppress")]
    pub suppress_opt_off: bool,
    /// ITO gradients by plain autodiff, keeping every activation (about 2x faster than the
    /// default activation checkpointing, about 4.5x more memory for that pass).
    #[arg(long, requires = "suppress")]
    pub suppress_opt_no_checkpoint: bool,
}

impl GenerateSuppress {
    /// The library settings for generated images, when `--suppress` was given.
    pub fn params(&self) -> Option<SuppressParams> {
        self.params_with_scale(20.0)
    }

    /// The library settings with ITO step scale `default_scale` unless given.
    pub fn params_with_scale(&self, default_scale: f64) -> Option<SuppressParams> {
        let words = self.suppress.clone()?;
        Some(SuppressParams {
            words,
            alpha: self.suppress_alpha,
            start: self.suppress_start,
            opt_end: self.suppress_opt_end,
            opt_iters: self.suppress_opt_iters,
            opt_scale: self.suppress_opt_scale.unwrap_or(default_scale),
            optimize: !self.suppress_opt_off,
            checkpoint: !self.suppress_opt_no_checkpoint,
        })
    }

    /// `key: value` pairs for the PNG's A1111 parameters.
    pub fn png_extra(s: &SuppressParams) -> Vec<(String, String)> {
        let mut v = vec![("SuppressEOT".to_string(), format!("\"{}\"", s.words.replace('"', "'"))), ("SuppressEOT alpha".into(), s.alpha.to_string())];
        v.push(("SuppressEOT start".into(), s.start.to_string()));
        if s.optimize {
            v.push(("SuppressEOT ITO".into(), format!("end {}, iters {}, scale {}", s.opt_end, s.opt_iters, s.opt_scale)));
        } else {
            v.push(("SuppressEOT ITO".into(), "off".into()));
        }
        v
    }
}
