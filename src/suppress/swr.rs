//! SuppressEOT's soft-weighted regularisation (SWR, `SuppressEOT/run.py`: `woword_eot_context`
//! / `torch.svd` on the negative-target matrix) and locating the words to suppress in a prompt.
//!
//! SWR operates on the text-encoder output `c` (`last_hidden_state`, `[77, D]`): the rows
//! `idx = I ++ [n-1, n, ..., 76]` (negative-target positions, the first EOT and every padding
//! position) form `X = c[idx]^T` (`D x K`); thin SVD `X = U diag(s) V^T`,
//! `s_i -> s_i * exp(-alpha * s_i)`, rebuild, write the rows back. Rows are selected by
//! *position*, never by token id (SD 2.x tokenizers pad with `!`, id 0).

use burn::tensor::{Tensor, TensorData};
use nalgebra::{DMatrix, DVector};

use super::{SuppressError, read_f32};
use crate::pipeline::Tokenized;
use crate::tokenizer::ClipTokenizer;

/// Where the words to suppress are in a tokenized prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppressTokens {
    /// `n`: the prompt's length in tokens, BOS to the first EOS inclusive (at most 77).
    pub n: usize,
    /// `I`: positions (in `0..n`) of the negative-target tokens, ascending, BOS/EOS excluded.
    pub target: Vec<usize>,
}

impl SuppressTokens {
    /// The positions SWR rewrites: `I ++ [n-1 .. seq_len)`.
    pub fn swr_rows(&self, seq_len: usize) -> Vec<usize> {
        let mut rows = self.target.clone();
        rows.extend(self.n.saturating_sub(1)..seq_len);
        rows
    }

    /// Prompt tokens whose attention the optimisation preserves or suppresses: `1..n-1`
    /// (BOS and EOS excluded).
    pub fn word_positions(&self) -> std::ops::Range<usize> {
        1..self.n.saturating_sub(1).max(1)
    }
}

/// Finds the tokens of `words` in `prompt` (tokenized as the pipeline does, multi-vector
/// textual-inversion tokens expanded). `words` holds one or more comma-separated groups; each
/// group is tokenized on its own and every occurrence of its token sequence among the prompt's
/// tokens (between BOS and the first EOS) is a negative target.
///
/// Fails with [`SuppressError::WordNotInPrompt`] when a group does not occur, naming the group
/// and what both tokenized to.
pub fn locate_words(tokenizer: &ClipTokenizer, prompt: &Tokenized, words: &str) -> Result<SuppressTokens, SuppressError> {
    let seq = prompt.input_ids.len();
    let n = prompt.ids.len().min(seq);
    let body = 1..n.saturating_sub(1).max(1);
    let mut target = Vec::new();
    let mut groups = 0;
    for group in words.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        groups += 1;
        let enc = tokenizer.tokenize(&tokenizer.maybe_convert_prompt(group));
        let len = enc.ids.len();
        let mut found = false;
        if len > 0 && body.len() >= len {
            for start in body.start..=body.end - len {
                if prompt.input_ids[start..start + len] == enc.ids[..] {
                    target.extend(start..start + len);
                    found = true;
                }
            }
        }
        if !found {
            return Err(SuppressError::WordNotInPrompt {
                word: group.to_string(),
                word_tokens: enc.tokens,
                prompt_tokens: prompt.tokens[body.clone()].to_vec(),
            });
        }
    }
    if groups == 0 {
        return Err(SuppressError::NoWords);
    }
    target.sort_unstable();
    target.dedup();
    Ok(SuppressTokens { n, target })
}

/// SWR of one prompt embedding on the host, in f64.
///
/// - `c`: `[seq, dim]` row-major; `rows`: positions to rewrite (see [`SuppressTokens::swr_rows`]).
/// - returns `[seq, dim]` with `c[rows] := (U diag(s * exp(-alpha s)) V^T)^T`, other rows unchanged.
pub fn swr_host(c: &[f64], seq: usize, dim: usize, rows: &[usize], alpha: f64) -> Vec<f64> {
    assert_eq!(c.len(), seq * dim, "c must be [seq, dim]");
    let k = rows.len();
    let mut out = c.to_vec();
    if k == 0 || dim == 0 {
        return out;
    }
    // X = c[rows]^T: D x K
    let x = DMatrix::<f64>::from_fn(dim, k, |d, j| c[rows[j] * dim + d]);
    let svd = x.svd(true, true);
    let (u, v_t) = (svd.u.expect("U requested"), svd.v_t.expect("V^T requested"));
    let s_hat = DVector::<f64>::from_iterator(svd.singular_values.len(), svd.singular_values.iter().map(|&s| s * (-alpha * s).exp()));
    let x_hat = u * DMatrix::from_diagonal(&s_hat) * v_t;
    for (j, &r) in rows.iter().enumerate() {
        for d in 0..dim {
            out[r * dim + d] = x_hat[(d, j)];
        }
    }
    out
}

/// SWR of prompt embeddings on the device: one readback, the SVD on the host in f64
/// ([`swr_host`], applied to every batch element), one upload.
///
/// # Shapes
/// - `c`: `[batch, seq, dim]` (the text encoder's `last_hidden_state`) -> `[batch, seq, dim]`
pub async fn soft_weighted_regularization(c: Tensor<3>, tokens: &SuppressTokens, alpha: f64) -> Result<Tensor<3>, SuppressError> {
    let [b, seq, dim] = c.dims();
    let device = c.device();
    let host = read_f32(c).await?;
    let rows = tokens.swr_rows(seq);
    let mut out = Vec::with_capacity(host.len());
    for item in host.chunks_exact(seq * dim) {
        let x: Vec<f64> = item.iter().map(|&v| v as f64).collect();
        out.extend(swr_host(&x, seq, dim, &rows, alpha).into_iter().map(|v| v as f32));
    }
    Ok(Tensor::from_data(TensorData::new(out, [b, seq, dim]), &device))
}
