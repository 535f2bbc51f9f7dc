//! Textual-inversion embedding files, as diffusers' `load_textual_inversion` reads them:
//! diffusers `learned_embeds.safetensors` (`{"<tok>": F32[n, D]}` or `[D]`, metadata
//! `{"format": "pt"}`) and AUTOMATIC1111 `.safetensors` (`{"emb_params": [n, D]}`, the token is the
//! file stem unless given). The `.pt`/`.bin` pickles and PNG embeddings come with training.

use crate::error::EmbeddingError;
use crate::weights::{ByteSource, SafetensorsHeader, read_tensor_f32};

/// A learned embedding: the token it registers and its `n` vectors of width `dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct TextualInversion {
    /// Token string (`<chelsea>`); with n > 1 the extra tokens are `<chelsea>_1`, `<chelsea>_2`...
    pub token: String,
    /// Row-major `[n, dim]`.
    pub vectors: Vec<f32>,
    pub n: usize,
    pub dim: usize,
}

impl TextualInversion {
    /// The token strings this embedding registers, as diffusers does: `T`, `T_1`, ..., `T_{n-1}`.
    pub fn tokens(&self) -> Vec<String> {
        (0..self.n).map(|i| if i == 0 { self.token.clone() } else { format!("{}_{i}", self.token) }).collect()
    }
}

/// Reads an embedding safetensors file. `token` overrides the token name; `stem` is the file stem
/// used as the token of A1111 files when no override is given.
pub async fn read_safetensors_embedding<S: ByteSource>(
    source: &S,
    token: Option<&str>,
    stem: &str,
) -> Result<TextualInversion, EmbeddingError> {
    let file = source.name().to_string();
    let invalid = |reason: String| EmbeddingError::Invalid { file: file.clone(), reason };
    let header = SafetensorsHeader::read(source).await?;
    let (key, entry) = if let Some(e) = header.tensors.get("emb_params") {
        ("emb_params".to_string(), e)
    } else if header.tensors.len() == 1 {
        let (k, e) = header.tensors.iter().next().expect("one tensor");
        (k.clone(), e)
    } else {
        let mut names: Vec<&String> = header.tensors.keys().collect();
        names.sort();
        return Err(invalid(format!(
            "expected one tensor (diffusers: {{\"<token>\": [n, dim]}}) or `emb_params` (AUTOMATIC1111), found {}: {names:?}",
            names.len()
        )));
    };
    let (n, dim) = match entry.shape.as_slice() {
        [d] => (1, *d),
        [n, d] => (*n, *d),
        other => return Err(invalid(format!("tensor `{key}` has shape {other:?}; expected [dim] or [n, dim]"))),
    };
    if n == 0 || dim == 0 {
        return Err(invalid(format!("tensor `{key}` is empty ({n} x {dim})")));
    }
    let vectors = read_tensor_f32(source, entry).await?;
    if vectors.iter().any(|v| !v.is_finite()) {
        return Err(invalid(format!("tensor `{key}` contains NaN or infinite values")));
    }
    let token = match token {
        Some(t) => t.to_string(),
        None if key == "emb_params" => stem.to_string(),
        None => key.clone(),
    };
    if token.trim().is_empty() {
        return Err(invalid("the token name is empty".into()));
    }
    Ok(TextualInversion { token, vectors, n, dim })
}
