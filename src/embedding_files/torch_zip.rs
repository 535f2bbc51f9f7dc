//! PyTorch checkpoint containers, read without torch: the zip format of `torch.save` (torch >=
//! 1.6: `<folder>/data.pkl`, `<folder>/data/<key>` raw storages, `<folder>/byteorder`,
//! `<folder>/version`; the folder name varies: `archive`, or the file stem in recent torch) and
//! the legacy non-zip stream (magic pickle, protocol, sys_info, the object, the storage keys, then
//! each storage as `u64 numel` + little-endian data). Writing: the zip format, as torch lays it out.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};

use super::pickle::{PickleError, PickleValue, StorageDtype, TensorInfo, Unpickler};

/// Largest tensor read from a checkpoint (bytes). Embeddings are far smaller (75 x 1280 f32 =
/// 384 KB); this only bounds what a hostile file can make us inflate.
pub const MAX_TENSOR_BYTES: u64 = 64 << 20;
/// Largest pickle (`data.pkl`) read.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

fn bad<T>(msg: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError::Malformed(msg.into()))
}

/// An opened checkpoint: the unpickled object and access to its storages.
pub struct TorchCheckpoint<'a> {
    pub root: PickleValue,
    storages: Storages<'a>,
}

enum Storages<'a> {
    Zip {
        archive: Box<zip::ZipArchive<Cursor<&'a [u8]>>>,
        prefix: String,
        big_endian: bool,
    },
    /// key -> byte range of the data (little-endian) in `data`.
    Legacy {
        data: &'a [u8],
        by_key: HashMap<String, (usize, usize)>,
    },
}

impl<'a> TorchCheckpoint<'a> {
    /// Opens a torch zip checkpoint from its bytes.
    pub fn open_zip(bytes: &'a [u8]) -> Result<Self, PickleError> {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| PickleError::Malformed(format!("damaged or truncated zip archive ({e})")))?;
        let pkl = archive
            .file_names()
            .filter_map(|n| n.ok())
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(|n| n.to_string());
        let Some(pkl) = pkl else {
            let mut names: Vec<String> = archive.file_names().filter_map(|n| n.ok()).take(8).map(|n| n.to_string()).collect();
            names.sort();
            return bad(format!("a zip archive without `<folder>/data.pkl`, so not a torch.save file (entries: {names:?})"));
        };
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let pickle = read_entry(&mut archive, &pkl, MAX_PICKLE_BYTES, true)?;
        let big_endian = match read_entry(&mut archive, &format!("{prefix}byteorder"), 16, true) {
            Ok(b) => match b.trim_ascii() {
                b"little" => false,
                b"big" => true,
                other => return bad(format!("unknown byteorder {:?}", String::from_utf8_lossy(other))),
            },
            Err(_) => false, // older torch: no byteorder record, little-endian
        };
        let root = Unpickler::new(&pickle).load()?;
        Ok(Self { root, storages: Storages::Zip { archive: Box::new(archive), prefix, big_endian } })
    }

    /// Opens a legacy (pre-1.6, non-zip) torch checkpoint, which starts with a pickled magic number.
    pub fn open_legacy(bytes: &'a [u8]) -> Result<Self, PickleError> {
        const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
        let mut u = Unpickler::new(bytes);
        if u.load()?.as_int() != Some(MAGIC) {
            return bad("not a torch checkpoint (no torch magic number)");
        }
        let protocol = u.load()?;
        if protocol.as_int() != Some(1001) {
            return bad(format!("unsupported legacy torch protocol {protocol:?}"));
        }
        let sys_info = u.load()?;
        if matches!(sys_info.get("little_endian"), Some(PickleValue::Bool(false))) {
            return bad("the file was written on a big-endian machine by a legacy torch; re-save it with a current torch");
        }
        let root = u.load()?;
        let keys = u.load()?;
        let PickleValue::List(keys) = keys else { return bad("legacy torch file: the storage key list is missing") };
        // element size of each storage, from the tensors that use it
        let mut dtypes: HashMap<String, StorageDtype> = HashMap::new();
        collect_tensors(&root, 0, &mut |t: &TensorInfo| {
            dtypes.insert(t.storage_key.clone(), t.dtype);
        });
        let mut pos = u.position();
        let mut by_key = HashMap::new();
        for k in keys {
            let key = match k {
                PickleValue::Str(s) => s,
                PickleValue::Int(i) => i.to_string(),
                other => return bad(format!("legacy torch file: storage key of type {}", other.type_name())),
            };
            let Some(&dtype) = dtypes.get(&key) else {
                return bad(format!("legacy torch file: storage `{key}` is used by no tensor, its element size is unknown"));
            };
            let head =
                bytes.get(pos..pos + 8).ok_or_else(|| PickleError::Malformed(format!("legacy torch file truncated in storage `{key}`")))?;
            let numel = u64::from_le_bytes(head.try_into().expect("8 bytes"));
            let len = numel.checked_mul(dtype.size() as u64).and_then(|l| usize::try_from(l).ok());
            let start = pos + 8;
            let end = len.and_then(|l| start.checked_add(l)).filter(|&e| e <= bytes.len());
            let Some(end) = end else {
                return bad(format!("legacy torch file truncated: storage `{key}` declares {numel} elements"));
            };
            by_key.insert(key, (start, end));
            pos = end;
        }
        Ok(Self { root, storages: Storages::Legacy { data: bytes, by_key } })
    }

    /// The values of `t` as f32 (any float storage dtype; non-contiguous views are gathered).
    pub fn tensor_f32(&mut self, t: &TensorInfo) -> Result<Vec<f32>, PickleError> {
        if !t.dtype.is_float() {
            return bad(format!("the tensor has dtype {:?}; embedding vectors must be floating point", t.dtype));
        }
        let es = t.dtype.size() as u64;
        let Some(span) = view_span(t)? else { return Ok(Vec::new()) };
        if span > t.storage_numel {
            return bad(format!(
                "tensor view (offset {}, size {:?}, stride {:?}) reaches element {} but its storage has {}",
                t.offset, t.size, t.stride, span, t.storage_numel
            ));
        }
        let need = span.checked_mul(es).filter(|&b| b <= MAX_TENSOR_BYTES).ok_or_else(|| {
            PickleError::Malformed(format!("tensor of {span} elements is larger than an embedding can be ({MAX_TENSOR_BYTES} bytes)"))
        })?;
        match &mut self.storages {
            Storages::Zip { archive, prefix, big_endian } => {
                let name = format!("{prefix}data/{}", t.storage_key);
                let bytes = read_entry(archive, &name, need, false)?;
                if (bytes.len() as u64) < need {
                    return bad(format!("storage `{name}` has {} bytes but the tensor needs {need}", bytes.len()));
                }
                gather(t, &bytes, *big_endian)
            }
            Storages::Legacy { data, by_key } => {
                let Some(&(start, end)) = by_key.get(&t.storage_key) else {
                    return bad(format!("legacy torch file: no data for storage `{}`", t.storage_key));
                };
                // In bytes: the storage was sized with the element type of the last tensor using
                // it, which a hostile file can make differ from this tensor's.
                let have = (end - start) as u64;
                if need > have {
                    return bad(format!(
                        "storage `{}` has {have} bytes but the tensor needs {need} ({span} x {:?})",
                        t.storage_key, t.dtype
                    ));
                }
                gather(t, &data[start..start + need as usize], false)
            }
        }
    }
}

/// Calls `f` on every tensor in `v` (depth-bounded).
pub fn collect_tensors(v: &PickleValue, depth: usize, f: &mut dyn FnMut(&TensorInfo)) {
    if depth > 64 {
        return;
    }
    match v {
        PickleValue::Tensor(t) => f(t),
        PickleValue::List(l) | PickleValue::Tuple(l) => l.iter().for_each(|x| collect_tensors(x, depth + 1, f)),
        PickleValue::Dict(d) => d.iter().for_each(|(k, x)| {
            collect_tensors(k, depth + 1, f);
            collect_tensors(x, depth + 1, f)
        }),
        PickleValue::Module { state, .. } => collect_tensors(state, depth + 1, f),
        _ => {}
    }
}

/// Number of storage elements the view spans from element 0 (`offset + max index + 1`), `None`
/// for an empty tensor.
fn view_span(t: &TensorInfo) -> Result<Option<u64>, PickleError> {
    if t.size.contains(&0) {
        return Ok(None);
    }
    let overflow = || PickleError::Malformed(format!("tensor size {:?} / stride {:?} overflow", t.size, t.stride));
    let mut last = t.offset;
    for (&s, &st) in t.size.iter().zip(&t.stride) {
        last = (s - 1).checked_mul(st).and_then(|x| x.checked_add(last)).ok_or_else(overflow)?;
    }
    Ok(Some(last.checked_add(1).ok_or_else(overflow)?))
}

/// Reads the elements of the view `t` from its storage bytes (which cover the span).
fn gather(t: &TensorInfo, bytes: &[u8], big_endian: bool) -> Result<Vec<f32>, PickleError> {
    let es = t.dtype.size();
    let mut numel: u64 = 1;
    for &s in &t.size {
        numel = numel.checked_mul(s).ok_or_else(|| PickleError::Malformed(format!("tensor size {:?} overflows", t.size)))?;
    }
    // Overlapping (e.g. zero-stride) views could expand a small storage into a huge tensor.
    if numel > (bytes.len() / es) as u64 {
        return bad(format!(
            "tensor of {numel} elements (size {:?}, stride {:?}) is larger than its storage: overlapping views are not embeddings",
            t.size, t.stride
        ));
    }
    let read = |i: u64| -> f32 {
        let at = i as usize * es;
        let mut b = [0u8; 8];
        b[..es].copy_from_slice(&bytes[at..at + es]);
        if big_endian {
            b[..es].reverse();
        }
        match t.dtype {
            StorageDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            StorageDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            StorageDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            StorageDtype::F64 => f64::from_le_bytes(b) as f32,
            StorageDtype::I64 | StorageDtype::I32 => unreachable!("checked is_float"),
        }
    };
    let mut out = Vec::with_capacity(numel as usize);
    let rank = t.size.len();
    let mut idx = vec![0u64; rank];
    loop {
        let pos = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        out.push(read(pos));
        let mut k = rank;
        loop {
            if k == 0 {
                return Ok(out);
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < t.size[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// Reads up to `max` bytes of entry `name`, growing the buffer only as data arrives (the sizes
/// in the zip directory are not trusted for allocation). With `whole`, an entry declared larger
/// than `max` is an error instead of being cut.
fn read_entry(archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str, max: u64, whole: bool) -> Result<Vec<u8>, PickleError> {
    let mut f = archive.by_name(name).map_err(|e| PickleError::Malformed(format!("zip entry `{name}`: {e}")))?;
    if whole && f.size() > max {
        return bad(format!("zip entry `{name}` is {} bytes, more than an embedding file holds ({max})", f.size()));
    }
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while (out.len() as u64) < max {
        let want = chunk.len().min((max - out.len() as u64) as usize);
        let n = f.read(&mut chunk[..want]).map_err(|e| PickleError::Malformed(format!("zip entry `{name}`: {e}")))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// Writes a torch zip checkpoint: `<folder>/data.pkl`, `<folder>/byteorder`, the storages
/// `<folder>/data/<key>`, `<folder>/version`, each stored (uncompressed) with its data aligned to
/// 64 bytes by an `FB` extra field, as torch's `PyTorchStreamWriter` does.
pub fn write_zip(folder: &str, pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let fb = u16::from_le_bytes(*b"FB");
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment_and_header_id(64, fb);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let mut put = |name: String, data: &[u8]| {
        w.start_file(name, opts).expect("zip entry in memory");
        w.write_all(data).expect("writing to memory");
    };
    put(format!("{folder}/data.pkl"), pickle);
    put(format!("{folder}/byteorder"), b"little");
    for (key, data) in storages {
        put(format!("{folder}/data/{key}"), data);
    }
    put(format!("{folder}/version"), b"3\n");
    w.finish().expect("finishing a zip in memory").into_inner()
}
