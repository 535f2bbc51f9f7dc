//! Embedding safetensors files: diffusers `learned_embeds.safetensors` (`{"<tok>": F32[n, D]}`,
//! metadata `{"format": "pt"}`) and AUTOMATIC1111-style `{"emb_params": F32[n, D]}` (as kohya's
//! sd-scripts and A1111 extensions write them; A1111 itself only writes `.pt`/`.png`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::{A1111Meta, TextualInversion};
use crate::error::{EmbeddingError, WeightsError};
use crate::weights::{ByteSource, SafetensorsHeader, read_tensor_f32};

/// What a safetensors embedding file held.
pub struct SafetensorsEmbedding {
    pub embedding: TextualInversion,
    /// `emb_params` (A1111 style) rather than a token key.
    pub a1111: bool,
    pub metadata: HashMap<String, String>,
}

/// Reads an embedding safetensors file (see [`super::read_safetensors_embedding`]).
pub async fn read<S: ByteSource>(source: &S, token: Option<&str>, stem: &str) -> Result<SafetensorsEmbedding, EmbeddingError> {
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
        let hint = if names.iter().any(|n| *n == "clip_l" || *n == "clip_g") {
            " (clip_l/clip_g: an SDXL embedding; only SD 1.x/2.x embeddings are supported)"
        } else {
            ""
        };
        return Err(invalid(format!(
            "expected one tensor (diffusers: {{\"<token>\": [n, dim]}}) or `emb_params` (AUTOMATIC1111), found {}: {names:?}{hint}",
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
    let a1111 = key == "emb_params";
    let token = match token {
        Some(t) => t.to_string(),
        None if a1111 => stem.to_string(),
        None => key.clone(),
    };
    if token.trim().is_empty() {
        return Err(invalid("the token name is empty".into()));
    }
    Ok(SafetensorsEmbedding { embedding: TextualInversion { token, vectors, n, dim }, a1111, metadata: header.metadata })
}

/// A file already in memory.
pub struct SliceSource<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

impl ByteSource for SliceSource<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, WeightsError> {
        let range = usize::try_from(offset).ok().and_then(|o| Some(o..o.checked_add(len)?)).filter(|r| r.end <= self.bytes.len());
        match range {
            Some(r) => Ok(self.bytes[r].to_vec()),
            None => Err(WeightsError::Io { file: self.name.into(), reason: format!("reading {len} bytes at {offset}: past the end") }),
        }
    }
}

/// Runs a future over a [`SliceSource`]: it never waits, so one poll finishes it.
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("in-memory reads complete at once"),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn serialize(key: &str, emb: &TextualInversion, metadata: HashMap<String, String>) -> Vec<u8> {
    let bytes = f32_bytes(&emb.vectors);
    let view = TensorView::new(Dtype::F32, vec![emb.n, emb.dim], &bytes).expect("n * dim values");
    safetensors::serialize([(key.to_string(), view)], Some(metadata)).expect("serializing to memory")
}

/// diffusers `learned_embeds.safetensors`: `{"<token>": F32[n, D]}` + `{"format": "pt"}`.
pub fn write_diffusers(emb: &TextualInversion) -> Vec<u8> {
    serialize(&emb.token, emb, HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// A1111-style `{"emb_params": F32[n, D]}` with the A1111 fields as string metadata
/// (`name`, `step`, `sd_checkpoint`, `sd_checkpoint_name`; absent ones left out).
pub fn write_a1111(emb: &TextualInversion, meta: &A1111Meta) -> Vec<u8> {
    let mut m = HashMap::new();
    m.insert("name".to_string(), meta.name.clone().unwrap_or_else(|| emb.token.clone()));
    if let Some(s) = meta.step {
        m.insert("step".to_string(), s.to_string());
    }
    if let Some(c) = &meta.sd_checkpoint {
        m.insert("sd_checkpoint".to_string(), c.clone());
    }
    if let Some(c) = &meta.sd_checkpoint_name {
        m.insert("sd_checkpoint_name".to_string(), c.clone());
    }
    serialize("emb_params", emb, m)
}

/// The A1111 fields from a safetensors file's metadata.
pub fn meta_from(metadata: &HashMap<String, String>) -> A1111Meta {
    A1111Meta {
        name: metadata.get("name").cloned(),
        step: metadata.get("step").and_then(|s| s.parse().ok()),
        sd_checkpoint: metadata.get("sd_checkpoint").cloned(),
        sd_checkpoint_name: metadata.get("sd_checkpoint_name").cloned(),
    }
}
