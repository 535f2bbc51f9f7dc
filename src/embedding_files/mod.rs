//! Textual-inversion embedding files, read from bytes (native and browser alike) and written:
//!
//! | format | layout | token when none is given |
//! | --- | --- | --- |
//! | diffusers `learned_embeds.safetensors` | `{"<tok>": F32[n, D]}` (or `[D]`), metadata `{"format": "pt"}` | the key |
//! | diffusers `learned_embeds.bin` | torch pickle `{"<tok>": tensor}` (zip or legacy) | the key |
//! | AUTOMATIC1111 `.safetensors` | `{"emb_params": [n, D]}` (+ optional string metadata) | the file stem |
//! | AUTOMATIC1111 `.pt` | torch zip pickle, `string_to_param {'*': tensor[n, D]}`, `name`, `step`, ... | `name` (else the stem) |
//! | AUTOMATIC1111 `.png` | preview PNG, `sd-ti-embedding` text chunk = base64 JSON | `name` (else the stem) |
//!
//! [`read_embedding`] detects the format from the content (PNG signature, zip `PK`, pickle `\x80`,
//! safetensors header), not from the extension. Torch pickles are read by a restricted
//! unpickler ([`pickle`]) that rebuilds tensors and plain containers only and refuses any other
//! global: nothing in a file is executed. [`write_embedding`] writes any of the four
//! [`EmbeddingFormat`]s.

mod a1111;
pub mod pickle;
mod png_embed;
mod safetensors_io;
pub mod torch_zip;

use std::path::Path;

use crate::error::EmbeddingError;
use crate::weights::ByteSource;
use pickle::{PickleError, PickleValue};

pub use png_embed::CHUNK_KEYWORD as PNG_CHUNK_KEYWORD;

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

/// The extra fields AUTOMATIC1111 keeps with an embedding. Writers fill `name` with the token
/// when it is `None`; absent fields are written as `None` (`.pt`, PNG) or left out (safetensors).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct A1111Meta {
    /// The embedding's name (A1111 shows it; diffusers registers it as the token of a `.pt`).
    pub name: Option<String>,
    /// Training steps done.
    pub step: Option<i64>,
    /// Short hash of the checkpoint it was trained on.
    pub sd_checkpoint: Option<String>,
    /// Name of that checkpoint.
    pub sd_checkpoint_name: Option<String>,
}

/// A format [`write_embedding`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingFormat {
    /// diffusers `learned_embeds.safetensors`.
    Diffusers,
    /// AUTOMATIC1111-style `.safetensors` (`emb_params`).
    A1111Safetensors,
    /// AUTOMATIC1111 `.pt` (torch zip pickle).
    A1111Pt,
    /// AUTOMATIC1111 embedding PNG (preview image + `sd-ti-embedding` chunk).
    A1111Png,
}

impl EmbeddingFormat {
    pub const ALL: [EmbeddingFormat; 4] = [Self::Diffusers, Self::A1111Safetensors, Self::A1111Pt, Self::A1111Png];

    /// The name used on the command line: `diffusers`, `a1111`, `a1111-pt`, `a1111-png`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Diffusers => "diffusers",
            Self::A1111Safetensors => "a1111",
            Self::A1111Pt => "a1111-pt",
            Self::A1111Png => "a1111-png",
        }
    }

    /// The usual file extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Diffusers | Self::A1111Safetensors => "safetensors",
            Self::A1111Pt => "pt",
            Self::A1111Png => "png",
        }
    }
}

impl std::fmt::Display for EmbeddingFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EmbeddingFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown embedding format `{s}`: use diffusers, a1111, a1111-pt or a1111-png"))
    }
}

/// What a file was read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    DiffusersSafetensors,
    /// diffusers `learned_embeds.bin` (torch pickle, zip or legacy).
    DiffusersPickle,
    A1111Safetensors,
    /// A1111 `.pt` (torch pickle, zip or legacy).
    A1111Pickle,
    A1111Png,
}

/// An embedding with what else its file said.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedEmbedding {
    pub embedding: TextualInversion,
    pub source: SourceFormat,
    /// A1111 fields (`name`, `step`, ...) when the file has them.
    pub meta: A1111Meta,
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Reads an embedding file of any supported format from its bytes. `file_name` (a name or a
/// path) is used in messages and, for A1111 files without a name, as the token; `token`
/// overrides the token the file implies.
pub fn read_embedding(bytes: &[u8], file_name: &str, token: Option<&str>) -> Result<TextualInversion, EmbeddingError> {
    read_embedding_with_meta(bytes, file_name, token).map(|l| l.embedding)
}

/// [`read_embedding`], also returning the detected format and the A1111 fields.
pub fn read_embedding_with_meta(bytes: &[u8], file_name: &str, token: Option<&str>) -> Result<LoadedEmbedding, EmbeddingError> {
    let file = file_name.to_string();
    let stem = file_stem(file_name);
    if bytes.starts_with(PNG_SIGNATURE) {
        return read_png(bytes, &file, &stem, token);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let ckpt = torch_zip::TorchCheckpoint::open_zip(bytes).map_err(|e| pickle_error(&file, e))?;
        return from_checkpoint(ckpt, &file, &stem, token);
    }
    if bytes.first() == Some(&0x80) {
        let ckpt = torch_zip::TorchCheckpoint::open_legacy(bytes).map_err(|e| pickle_error(&file, e))?;
        return from_checkpoint(ckpt, &file, &stem, token);
    }
    let ext = Path::new(file_name).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if looks_like_safetensors(bytes) || ext == "safetensors" {
        let src = safetensors_io::SliceSource { name: file_name, bytes };
        let st = safetensors_io::now(safetensors_io::read(&src, token, &stem))?;
        let meta = safetensors_io::meta_from(&st.metadata);
        let source = if st.a1111 { SourceFormat::A1111Safetensors } else { SourceFormat::DiffusersSafetensors };
        return Ok(LoadedEmbedding { embedding: st.embedding, source, meta });
    }
    let reason = match ext.as_str() {
        "pt" | "bin" | "ckpt" | "pth" => "not a torch.save file (no zip or pickle header)".to_string(),
        "png" => "not a PNG file".to_string(),
        "webp" | "jpg" | "jpeg" | "avif" | "jxl" => format!("`.{ext}` embedding images are not supported (only A1111 PNGs)"),
        _ => "unrecognised content (not safetensors, a torch zip or pickle, or a PNG)".to_string(),
    };
    Err(EmbeddingError::UnsupportedFormat { file, reason })
}

/// Writes `emb` in `format`. `meta` supplies A1111's fields (ignored for diffusers; `name`
/// defaults to the token).
pub fn write_embedding(emb: &TextualInversion, format: EmbeddingFormat, meta: &A1111Meta) -> Vec<u8> {
    match format {
        EmbeddingFormat::Diffusers => safetensors_io::write_diffusers(emb),
        EmbeddingFormat::A1111Safetensors => safetensors_io::write_a1111(emb, meta),
        EmbeddingFormat::A1111Pt => a1111::write_pt(emb, meta),
        EmbeddingFormat::A1111Png => png_embed::write_png(emb, meta),
    }
}

/// Adds (or replaces) A1111's `sd-ti-embedding` chunk in an existing PNG (e.g. an image made
/// with the embedding), keeping every other chunk as it is.
pub fn embed_in_png(png: &[u8], file_name: &str, emb: &TextualInversion, meta: &A1111Meta) -> Result<Vec<u8>, EmbeddingError> {
    png_embed::embed_in_png(png, emb, meta).map_err(|reason| EmbeddingError::Invalid { file: file_name.to_string(), reason })
}

/// The unpickled top-level object of a torch file (zip or legacy), e.g. to inspect its structure.
pub fn read_torch_object(bytes: &[u8], file_name: &str) -> Result<PickleValue, EmbeddingError> {
    let res =
        if bytes.starts_with(b"PK") { torch_zip::TorchCheckpoint::open_zip(bytes) } else { torch_zip::TorchCheckpoint::open_legacy(bytes) };
    res.map(|c| c.root).map_err(|e| pickle_error(file_name, e))
}

/// The data.pkl bytes of an A1111 `.pt` for `emb` (what [`write_embedding`] stores), with the
/// tensor's `requires_grad` chosen (A1111's training saves `True`).
pub fn a1111_pt_pickle(emb: &TextualInversion, meta: &A1111Meta, requires_grad: bool) -> Vec<u8> {
    a1111::pt_pickle(emb, meta, requires_grad)
}

/// Reads an embedding safetensors file. `token` overrides the token name; `stem` is the file stem
/// used as the token of A1111 files when no override is given.
pub async fn read_safetensors_embedding<S: ByteSource>(
    source: &S,
    token: Option<&str>,
    stem: &str,
) -> Result<TextualInversion, EmbeddingError> {
    Ok(safetensors_io::read(source, token, stem).await?.embedding)
}

fn file_stem(file_name: &str) -> String {
    // Both separators: browser names have none, Windows paths use `\`.
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let stem = Path::new(base).file_stem().and_then(|s| s.to_str()).unwrap_or(base);
    if stem.is_empty() { "embedding".to_string() } else { stem.to_string() }
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[8] == b'{'
}

fn pickle_error(file: &str, e: PickleError) -> EmbeddingError {
    match e {
        PickleError::Forbidden { module, name } => {
            EmbeddingError::UnsafePickle { file: file.to_string(), global: format!("{module}.{name}") }
        }
        PickleError::Malformed(reason) => EmbeddingError::BadTorchFile { file: file.to_string(), reason },
    }
}

/// Validates vectors and applies the token rule: `token` if given, else `implied`, else the stem.
fn finish(
    file: &str,
    vectors: Vec<f32>,
    n: usize,
    dim: usize,
    token: Option<&str>,
    implied: Option<&str>,
    stem: &str,
) -> Result<TextualInversion, EmbeddingError> {
    let invalid = |reason: String| EmbeddingError::Invalid { file: file.to_string(), reason };
    if n == 0 || dim == 0 {
        return Err(invalid(format!("the embedding tensor is empty ({n} x {dim})")));
    }
    if vectors.len() != n * dim {
        return Err(invalid(format!("the embedding tensor has {} values, expected {n} x {dim}", vectors.len())));
    }
    if vectors.iter().any(|v| !v.is_finite()) {
        return Err(invalid("the embedding contains NaN or infinite values".into()));
    }
    let token = token.or(implied.filter(|t| !t.trim().is_empty())).unwrap_or(stem).to_string();
    if token.trim().is_empty() {
        return Err(invalid("the token name is empty".into()));
    }
    Ok(TextualInversion { token, vectors, n, dim })
}

fn from_checkpoint(
    mut ckpt: torch_zip::TorchCheckpoint<'_>,
    file: &str,
    stem: &str,
    token: Option<&str>,
) -> Result<LoadedEmbedding, EmbeddingError> {
    let root = std::mem::replace(&mut ckpt.root, PickleValue::None);
    let found = a1111::find(&root).map_err(|reason| EmbeddingError::UnsupportedFormat { file: file.to_string(), reason })?;
    let (tensor, meta, implied, source) = match found {
        a1111::TorchEmbedding::A1111 { tensor, meta } => {
            let name = meta.name.clone();
            (tensor, meta, name, SourceFormat::A1111Pickle)
        }
        a1111::TorchEmbedding::Diffusers { key, tensor } => (tensor, A1111Meta::default(), Some(key), SourceFormat::DiffusersPickle),
    };
    let (n, dim) = a1111::shape_of(tensor).map_err(|reason| EmbeddingError::Invalid { file: file.to_string(), reason })?;
    let vectors = ckpt.tensor_f32(tensor).map_err(|e| pickle_error(file, e))?;
    let embedding = finish(file, vectors, n, dim, token, implied.as_deref(), stem)?;
    Ok(LoadedEmbedding { embedding, source, meta })
}

fn read_png(bytes: &[u8], file: &str, stem: &str, token: Option<&str>) -> Result<LoadedEmbedding, EmbeddingError> {
    let text = png_embed::find_chunk_text(bytes).map_err(|e| match e {
        png_embed::PngError::NoChunk => EmbeddingError::NoPngEmbedding { file: file.to_string() },
        png_embed::PngError::Malformed(reason) => EmbeddingError::Invalid { file: file.to_string(), reason },
    })?;
    let p = png_embed::parse_chunk_text(&text).map_err(|reason| EmbeddingError::Invalid { file: file.to_string(), reason })?;
    let embedding = finish(file, p.vectors, p.n, p.dim, token, p.meta.name.as_deref(), stem)?;
    Ok(LoadedEmbedding { embedding, source: SourceFormat::A1111Png, meta: p.meta })
}
