//! `pseudoword convert-embedding IN --out OUT --format F`: reads a textual-inversion embedding in
//! any supported format (diffusers .safetensors/.bin, A1111 .pt/.safetensors/.png) and writes it
//! as diffusers, a1111 (safetensors), a1111-pt or a1111-png. Prints one JSON line.

use std::path::PathBuf;

use clap::Args;
use pseudoword::embedding_files::{EmbeddingFormat, read_embedding_with_meta, write_embedding};
use pseudoword::error::{Error, InputError, WeightsError};

#[derive(Args)]
pub(crate) struct ConvertEmbeddingArgs {
    /// Embedding file to read (format detected from its content).
    input: PathBuf,
    /// File to write.
    #[arg(long)]
    out: PathBuf,
    /// Output format: diffusers, a1111 (safetensors), a1111-pt, a1111-png.
    #[arg(long)]
    format: EmbeddingFormat,
    /// Token to use instead of the one the input implies (diffusers key, A1111 name or file stem).
    #[arg(long)]
    token: Option<String>,
    /// A1111 `name` to write (default: the input's name, else the token).
    #[arg(long)]
    name: Option<String>,
}

/// Embedding files are kilobytes; refuse to slurp a model checkpoint by mistake.
const MAX_INPUT: u64 = 256 << 20;

pub(crate) fn run(args: ConvertEmbeddingArgs) -> Result<(), Error> {
    let in_name = args.input.display().to_string();
    let io = |file: &str, e: std::io::Error| Error::from(WeightsError::Io { file: file.to_string(), reason: e.to_string() });
    let len = std::fs::metadata(&args.input).map_err(|e| io(&in_name, e))?.len();
    if len > MAX_INPUT {
        return Err(InputError::EmbeddingTooLarge { path: in_name.to_string(), size: len as u64 }.into());
    }
    let bytes = std::fs::read(&args.input).map_err(|e| io(&in_name, e))?;
    let loaded = read_embedding_with_meta(&bytes, &in_name, args.token.as_deref())?;
    let mut meta = loaded.meta;
    if let Some(n) = args.name {
        meta.name = Some(n);
    } else if args.token.is_some() || meta.name.is_none() {
        // A new token (or none recorded) names the embedding too.
        meta.name = Some(loaded.embedding.token.clone());
    }
    let emb = loaded.embedding;
    let out_bytes = write_embedding(&emb, args.format, &meta);
    let out_name = args.out.display().to_string();
    std::fs::write(&args.out, out_bytes).map_err(|e| InputError::file("write", &out_name, e))?;
    let json = serde_json::json!({
        "in": in_name,
        "out": out_name,
        "format": args.format.name(),
        "token": emb.token,
        "vectors": emb.n,
        "dim": emb.dim,
    });
    println!("{json}");
    Ok(())
}
