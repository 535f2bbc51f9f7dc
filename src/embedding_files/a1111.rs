//! The objects inside torch embedding files, and writing AUTOMATIC1111's `.pt`.
//!
//! * A1111 (`modules/textual_inversion/textual_inversion.py`, `Embedding.save`):
//!   `{"string_to_token": {"*": 265}, "string_to_param": {"*": tensor[n, D]}, "name": str,
//!   "step": int, "sd_checkpoint": str|None, "sd_checkpoint_name": str|None}`. The original
//!   textual-inversion code saved `string_to_param` as a `torch.nn.ParameterDict`, whose
//!   `_parameters` hold the tensor (A1111 reads both).
//! * diffusers `learned_embeds.bin`: `{"<token>": tensor[n, D] or [D]}`.

use super::pickle::{PickleValue, PickleWriter, TensorInfo};
use super::{A1111Meta, TextualInversion};

/// The embedding tensor found in a torch file's root object.
pub enum TorchEmbedding<'v> {
    A1111 { tensor: &'v TensorInfo, meta: A1111Meta },
    Diffusers { key: String, tensor: &'v TensorInfo },
}

/// Finds the embedding in the unpickled root object, or says what the object is instead.
pub fn find(root: &PickleValue) -> Result<TorchEmbedding<'_>, String> {
    let Some(items) = root.dict_items() else {
        return Err(format!("the file holds a {}, not a dict of embedding data", root.type_name()));
    };
    if let Some(params) = root.get("string_to_param") {
        let params = match params {
            PickleValue::Module { state, .. } => state.get("_parameters").ok_or("`string_to_param` is a module without `_parameters`")?,
            p => p,
        };
        let entries = params.dict_items().ok_or("`string_to_param` is not a dict")?;
        if entries.len() != 1 {
            return Err(format!("`string_to_param` has {} entries; an A1111 embedding has exactly one", entries.len()));
        }
        let PickleValue::Tensor(tensor) = entries[0].1 else {
            return Err(format!("`string_to_param` holds a {}, not a tensor", entries[0].1.type_name()));
        };
        let s = |k: &str| root.get(k).and_then(PickleValue::as_str).map(str::to_string);
        let step = root.get("step").and_then(PickleValue::as_int).and_then(|i| i64::try_from(i).ok());
        let meta = A1111Meta { name: s("name"), step, sd_checkpoint: s("sd_checkpoint"), sd_checkpoint_name: s("sd_checkpoint_name") };
        return Ok(TorchEmbedding::A1111 { tensor, meta });
    }
    let keys: Vec<String> =
        items.iter().take(8).map(|(k, _)| k.as_str().map_or_else(|| format!("<{}>", k.type_name()), |s| s.to_string())).collect();
    if root.get("clip_l").is_some() || root.get("clip_g").is_some() {
        return Err("an SDXL embedding (clip_l/clip_g); only SD 1.x/2.x embeddings are supported".into());
    }
    if let [(PickleValue::Str(key), PickleValue::Tensor(tensor))] = items[..] {
        return Ok(TorchEmbedding::Diffusers { key: key.clone(), tensor });
    }
    Err(format!("no embedding in it: expected A1111's `string_to_param` or diffusers' {{\"<token>\": tensor}}, found keys {keys:?}"))
}

/// `(n, dim)` of an embedding tensor of shape `[D]` or `[n, D]`.
pub fn shape_of(t: &TensorInfo) -> Result<(usize, usize), String> {
    let dims: Vec<usize> = t.size.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    match dims[..] {
        [d] => Ok((1, d)),
        [n, d] => Ok((n, d)),
        _ => Err(format!("the embedding tensor has shape {:?}; expected [dim] or [n, dim]", t.size)),
    }
}

/// The `data.pkl` of an A1111 `.pt`, op for op as `torch.save` (pickle protocol 2) writes
/// `Embedding.save`'s dict; the tensor is `torch._utils._rebuild_tensor_v2(storage '0', 0, (n, D),
/// (D, 1), requires_grad, OrderedDict())` over a `FloatStorage` of n*D elements.
pub fn pt_pickle(emb: &TextualInversion, meta: &A1111Meta, requires_grad: bool) -> Vec<u8> {
    let (n, d) = (emb.n as i64, emb.dim as i64);
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.mark();
    p.str("string_to_token");
    p.empty_dict();
    let star = p.str("*");
    p.int(265);
    p.op(b's');
    p.str("string_to_param");
    p.empty_dict();
    p.get(star);
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.mark();
    // persistent id of the storage
    p.mark();
    p.str("storage");
    p.global("torch", "FloatStorage");
    p.str("0");
    p.str("cpu");
    p.int(n * d);
    p.tuple(5);
    p.op(b'Q');
    p.int(0);
    p.int_tuple(&[n, d]);
    p.int_tuple(&[d, 1]);
    p.bool(requires_grad);
    p.global("collections", "OrderedDict");
    p.empty_tuple();
    p.reduce();
    p.tuple(6);
    p.reduce();
    p.op(b's');
    p.str("name");
    p.str(meta.name.as_deref().unwrap_or(&emb.token));
    p.str("step");
    match meta.step {
        Some(s) => p.int(s),
        None => p.none(),
    }
    p.str("sd_checkpoint");
    p.opt_str(meta.sd_checkpoint.as_deref());
    p.str("sd_checkpoint_name");
    p.opt_str(meta.sd_checkpoint_name.as_deref());
    p.op(b'u');
    p.stop()
}

/// An A1111 `.pt` (torch zip) for `emb`. The tensor is saved with `requires_grad=True`, as in
/// the files A1111 writes while training.
pub fn write_pt(emb: &TextualInversion, meta: &A1111Meta) -> Vec<u8> {
    let pickle = pt_pickle(emb, meta, true);
    let data: Vec<u8> = emb.vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
    super::torch_zip::write_zip("archive", &pickle, &[("0", &data)])
}
