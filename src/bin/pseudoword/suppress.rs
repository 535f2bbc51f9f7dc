//! SuppressEOT option of `pseudoword encode` (`--suppress WORDS`): the SWR embedding as an extra
//! tensor. (`generate` and `edit` flatten the library's `SuppressSettings`.)

use burn::tensor::Tensor;
use clap::Args;
use pseudoword::error::Error;
use pseudoword::pipeline::{PromptEncoder, Tokenized};
use pseudoword::suppress::{locate_words, soft_weighted_regularization};
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
