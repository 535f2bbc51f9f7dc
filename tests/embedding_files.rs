//! Textual-inversion embedding files: every shared fixture (diffusers + AUTOMATIC1111
//! safetensors/.pt) loads with the right token and the exact rows; the `.pt` files give the
//! `embeddings_loaded` golden through the text encoder; every writer round-trips; the written
//! `.pt` has the fixture's pickle structure; hostile pickles, zips and PNGs give errors (never
//! panics, never allocations sized by declared lengths); and the `convert-embedding` CLI.

mod common;

use std::io::{Cursor, Read};
use std::path::Path;
use std::process::Command;

use base64::Engine;
use burn::tensor::{Device, Tensor};
use common::alloc::largest_allocation;
use common::*;
use pseudoword::embedding_files::pickle::{PickleValue, PickleWriter, StorageDtype, unpickle};
use pseudoword::embedding_files::torch_zip::write_zip;
use pseudoword::embedding_files::{
    A1111Meta, EmbeddingFormat, SourceFormat, TextualInversion, a1111_pt_pickle, embed_in_png, read_embedding, read_embedding_with_meta,
    read_torch_object, write_embedding,
};
use pseudoword::error::EmbeddingError;
use pseudoword::native::{load_prompt_encoder, read_embedding_file};

// ---- helpers ----

fn emb_dir() -> std::path::PathBuf {
    fixtures().join("embeddings")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(emb_dir().join(name)).unwrap()
}

/// The reference rows: the diffusers file of the same embedding.
fn diffusers_rows(n: usize) -> TextualInversion {
    let name = if n == 1 { "learned_embeds.safetensors" } else { "learned_embeds_2vec.safetensors" };
    let e = read_embedding(&fixture(name), name, None).unwrap();
    assert_eq!((e.token.as_str(), e.n, e.dim), ("<chelsea>", n, 32));
    e
}

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Reads bytes expecting an error; returns its message.
#[track_caller]
fn read_err(bytes: &[u8], name: &str) -> (EmbeddingError, String) {
    let e = read_embedding(bytes, name, None).expect_err("hostile input must be refused");
    let msg = e.to_string();
    (e, msg)
}

fn meta(name: &str, step: i64) -> A1111Meta {
    A1111Meta {
        name: Some(name.into()),
        step: Some(step),
        sd_checkpoint: Some("0123456789".into()),
        sd_checkpoint_name: Some("tiny-sd1".into()),
    }
}

fn sample_embedding(n: usize, dim: usize, token: &str) -> TextualInversion {
    let mut rng = Rng(0x5eed + n as u64);
    TextualInversion { token: token.into(), vectors: rng.vec(n * dim, 2.0), n, dim }
}

/// The entries of a zip archive in order, with their bytes.
fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            (f.name().unwrap().to_string(), v)
        })
        .collect()
}

// ---- the shared fixtures ----

#[test]
fn every_fixture_loads_with_the_expected_token_and_the_exact_rows() {
    let info: serde_json::Value = serde_json::from_slice(&fixture("embeddings.json")).unwrap();
    for (file, spec) in info["files"].as_object().unwrap() {
        let n = spec["n_vec"].as_u64().unwrap() as usize;
        let want = diffusers_rows(n);
        let a1111 = spec["format"].as_str().unwrap().starts_with("a1111");
        let token = a1111.then_some("<chelsea>");
        let bytes = fixture(file);
        let got = read_embedding_with_meta(&bytes, file, token).unwrap();
        assert_eq!(got.embedding.token, "<chelsea>", "{file}");
        assert_eq!((got.embedding.n, got.embedding.dim), (n, 32), "{file}");
        assert_eq!(got.embedding.vectors, want.vectors, "{file}: rows must be identical");
        let source = match spec["format"].as_str().unwrap() {
            "diffusers" => SourceFormat::DiffusersSafetensors,
            "a1111-safetensors" => SourceFormat::A1111Safetensors,
            "a1111-pt" => SourceFormat::A1111Pickle,
            other => panic!("format {other}"),
        };
        assert_eq!(got.source, source, "{file}");
        // the same through the native file reader
        let from_disk = read_embedding_file(&emb_dir().join(file), token).unwrap();
        assert_eq!(from_disk, got.embedding, "{file} via read_embedding_file");
        if source == SourceFormat::A1111Pickle {
            assert_eq!(got.meta, meta(file.trim_end_matches(".pt"), 5), "{file}: A1111 fields");
            // without a token the `.pt` registers its `name`, as diffusers does
            let named = read_embedding(&bytes, file, None).unwrap();
            assert_eq!(named.token, file.trim_end_matches(".pt"));
        }
        if source == SourceFormat::A1111Safetensors {
            assert_eq!(read_embedding(&bytes, file, None).unwrap().token, file.trim_end_matches(".safetensors"));
        }
    }
}

#[test]
fn format_is_detected_from_the_content_not_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    for (file, misnamed) in [
        ("chelsea-a1111-2vec.pt", "weird.safetensors"),
        ("learned_embeds_2vec.safetensors", "learned_embeds.bin"),
        ("chelsea-a1111-1vec.pt", "noext"),
    ] {
        let p = dir.path().join(misnamed);
        std::fs::copy(emb_dir().join(file), &p).unwrap();
        let e = read_embedding_file(&p, Some("<chelsea>")).unwrap();
        let want = diffusers_rows(e.n);
        assert_eq!(e.vectors, want.vectors, "{file} as {misnamed}");
    }
    let (e, msg) = read_err(b"GIF89a not an embedding at all", "thing.gif");
    assert!(matches!(e, EmbeddingError::UnsupportedFormat { .. }), "{msg}");
    assert!(msg.contains("thing.gif") && msg.contains("Supported"), "{msg}");
}

#[test]
fn pt_files_and_written_formats_give_the_embeddings_loaded_golden() {
    let g = read_golden(&tiny_sd1().join("goldens/embeddings_loaded.safetensors"));
    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![
        ("chelsea-a1111-1vec.pt".into(), fixture("chelsea-a1111-1vec.pt"), "1vec"),
        ("chelsea-a1111-2vec.pt".into(), fixture("chelsea-a1111-2vec.pt"), "2vec"),
    ];
    // conversions of the 2-vector embedding into every written format
    let two = diffusers_rows(2);
    for f in EmbeddingFormat::ALL {
        cases.push((format!("converted.{}", f.extension()), write_embedding(&two, f, &A1111Meta::default()), "2vec"));
    }
    for (file, bytes, which) in cases {
        let mut enc = load_prompt_encoder(&tiny_sd1(), None, &Device::flex()).unwrap();
        let emb = read_embedding(&bytes, &file, Some("<chelsea>")).unwrap();
        let ids = enc.add_embedding(&file, &emb).unwrap();
        assert_eq!(ids[0], 49408, "{file}");
        let (toks, out) = enc.encode(&["a photo of a <chelsea>"], false).unwrap();
        let want_ids: Vec<u32> = g.get(&format!("input_ids_{which}")).i.iter().map(|&i| i as u32).collect();
        assert_eq!(toks[0].input_ids, want_ids, "{file}");
        assert_close(&file, &f32s(out.last_hidden_state), &g.get(&format!("prompt_embeds_{which}")).f, 2e-5);
    }
}

// ---- writers ----

#[test]
fn every_writer_round_trips_rows_token_name_and_step() {
    for n in [1, 2, 3] {
        let emb = sample_embedding(n, 32, "<chelsea>");
        let m = meta("chelsea-ti", 1234);
        for f in EmbeddingFormat::ALL {
            let bytes = write_embedding(&emb, f, &m);
            let file = format!("out.{}", f.extension());
            let got = read_embedding_with_meta(&bytes, &file, None).unwrap();
            assert_eq!(got.embedding.vectors, emb.vectors, "{f} n={n}: rows");
            assert_eq!((got.embedding.n, got.embedding.dim), (n, 32), "{f}");
            match f {
                EmbeddingFormat::Diffusers => {
                    assert_eq!(got.source, SourceFormat::DiffusersSafetensors);
                    assert_eq!(got.embedding.token, "<chelsea>");
                }
                EmbeddingFormat::A1111Safetensors => {
                    assert_eq!(got.source, SourceFormat::A1111Safetensors);
                    assert_eq!(got.embedding.token, "out", "A1111 safetensors: the file stem");
                    assert_eq!(got.meta, m);
                }
                EmbeddingFormat::A1111Pt | EmbeddingFormat::A1111Png => {
                    assert_eq!(got.embedding.token, "chelsea-ti", "{f}: the name");
                    assert_eq!(got.meta, m, "{f}");
                }
            }
            // an explicit token always wins
            assert_eq!(read_embedding(&bytes, &file, Some("<x>")).unwrap().token, "<x>");
        }
        // without a name, A1111 writers record the token
        for f in [EmbeddingFormat::A1111Pt, EmbeddingFormat::A1111Png] {
            let got = read_embedding(&write_embedding(&emb, f, &A1111Meta::default()), "x", None).unwrap();
            assert_eq!(got.token, "<chelsea>", "{f}");
        }
    }
}

#[test]
fn diffusers_writer_reproduces_the_fixture_byte_for_byte() {
    for file in ["learned_embeds.safetensors", "learned_embeds_2vec.safetensors"] {
        let bytes = fixture(file);
        let e = read_embedding(&bytes, file, None).unwrap();
        assert_eq!(write_embedding(&e, EmbeddingFormat::Diffusers, &A1111Meta::default()), bytes, "{file}");
    }
}

fn tensor_of(v: &PickleValue) -> &pseudoword::embedding_files::pickle::TensorInfo {
    match v.get("string_to_param").and_then(|p| p.get("*")) {
        Some(PickleValue::Tensor(t)) => t,
        other => panic!("no tensor: {other:?}"),
    }
}

#[test]
fn written_pt_has_the_fixture_pickle_structure() {
    for (file, n) in [("chelsea-a1111-1vec.pt", 1), ("chelsea-a1111-2vec.pt", 2)] {
        let fx = fixture(file);
        let loaded = read_embedding_with_meta(&fx, file, None).unwrap();
        let ours = write_embedding(&loaded.embedding, EmbeddingFormat::A1111Pt, &loaded.meta);
        let (a, b) = (read_torch_object(&fx, file).unwrap(), read_torch_object(&ours, "ours.pt").unwrap());
        let keys =
            |v: &PickleValue| -> Vec<String> { v.dict_items().unwrap().iter().map(|(k, _)| k.as_str().unwrap().to_string()).collect() };
        assert_eq!(keys(&a), ["string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"]);
        assert_eq!(keys(&a), keys(&b));
        assert_eq!(a.get("string_to_token"), b.get("string_to_token"));
        assert_eq!(b.get("string_to_token").unwrap().get("*"), Some(&PickleValue::Int(265)));
        for k in ["name", "step", "sd_checkpoint", "sd_checkpoint_name"] {
            assert_eq!(a.get(k), b.get(k), "{k}");
        }
        let (ta, tb) = (tensor_of(&a), tensor_of(&b));
        assert_eq!((ta.dtype, tb.dtype), (StorageDtype::F32, StorageDtype::F32));
        assert_eq!(ta.size, [n as u64, 32]);
        assert_eq!((&ta.size, &ta.stride, ta.offset, ta.storage_numel), (&tb.size, &tb.stride, tb.offset, tb.storage_numel));
        assert_eq!(ta.storage_key, tb.storage_key);
        assert!(tb.requires_grad, "A1111 saves the trained tensor with requires_grad=True");

        // With requires_grad as in the fixture, data.pkl is byte-identical to torch.save's.
        let fx_entries = zip_entries(&fx);
        let (_, fx_pkl) = fx_entries.iter().find(|(n, _)| n.ends_with("/data.pkl")).unwrap();
        assert_eq!(&a1111_pt_pickle(&loaded.embedding, &loaded.meta, ta.requires_grad), fx_pkl, "{file}");

        // archive layout
        let entries = zip_entries(&ours);
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["archive/data.pkl", "archive/byteorder", "archive/data/0", "archive/version"]);
        assert_eq!(entries[1].1, b"little");
        assert_eq!(entries[3].1, b"3\n");
        let (_, fx_data) = fx_entries.iter().find(|(n, _)| n.ends_with("/data/0")).unwrap();
        assert_eq!(&entries[2].1, fx_data, "storage bytes");
        // storages are 64-byte aligned in the file, as torch writes them
        let mut z = zip::ZipArchive::new(Cursor::new(&ours[..])).unwrap();
        let start = z.by_name("archive/data/0").unwrap().data_start().unwrap();
        assert_eq!(start % 64, 0, "data/0 starts at {start}");
    }
}

#[test]
fn png_embedding_carries_a1111_json_and_can_be_added_to_any_png() {
    let mut emb = sample_embedding(2, 32, "<chelsea>");
    emb.vectors[0] = 2f32.powi(-20); // Python writes 9.5367431640625e-07
    emb.vectors[1] = 0.25;
    let png_bytes = write_embedding(&emb, EmbeddingFormat::A1111Png, &meta("chelsea", 7));
    let dec = png::Decoder::new(Cursor::new(&png_bytes[..]));
    let reader = dec.read_info().unwrap();
    let chunk = reader.info().uncompressed_latin1_text.iter().find(|t| t.keyword == "sd-ti-embedding").expect("tEXt chunk");
    let json = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&chunk.text).unwrap()).unwrap();
    assert!(
        json.starts_with(r#"{"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": [[9.5367431640625e-07, 0.25, "#),
        "{json}"
    );
    assert!(
        json.ends_with(r#"]]}}, "name": "chelsea", "step": 7, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny-sd1"}"#),
        "{json}"
    );

    // any PNG (here a plain 3x2 image) can carry the embedding
    let plain = plain_png();
    let (e, msg) = read_err(&plain, "photo.png");
    assert!(matches!(e, EmbeddingError::NoPngEmbedding { .. }), "{msg}");
    assert!(msg.contains("sd-ti-embedding") && msg.contains("photo.png"), "{msg}");
    let with = embed_in_png(&plain, "photo.png", &emb, &meta("chelsea", 7)).unwrap();
    let got = read_embedding(&with, "photo.png", None).unwrap();
    assert_eq!((got.token.as_str(), &got.vectors), ("chelsea", &emb.vectors));
    // replacing keeps a single chunk
    let again = embed_in_png(&with, "photo.png", &sample_embedding(1, 32, "<b>"), &A1111Meta::default()).unwrap();
    let got = read_embedding(&again, "photo.png", None).unwrap();
    assert_eq!((got.token.as_str(), got.n), ("<b>", 1));
    // the pixels are untouched
    assert_eq!(decode_rgb(&again), decode_rgb(&plain));
}

fn plain_png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 3, 2);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&[10u8; 18]).unwrap();
    w.finish().unwrap();
    out
}

fn decode_rgb(bytes: &[u8]) -> Vec<u8> {
    let mut r = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn png_chunk_is_found_compressed_or_after_the_image_data() {
    let emb = sample_embedding(1, 32, "<c>");
    let text = {
        let png_bytes = write_embedding(&emb, EmbeddingFormat::A1111Png, &A1111Meta::default());
        let r = png::Decoder::new(Cursor::new(&png_bytes[..])).read_info().unwrap();
        r.info().uncompressed_latin1_text[0].text.clone()
    };
    // zTXt before the image data
    let mut z = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut z, 1, 1);
        enc.set_color(png::ColorType::Grayscale);
        enc.add_ztxt_chunk("sd-ti-embedding".into(), text.clone()).unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0]).unwrap();
        w.finish().unwrap();
    }
    assert_eq!(read_embedding(&z, "z.png", None).unwrap().vectors, emb.vectors);
    // tEXt after IDAT: move the chunk behind the image data by hand
    let base = plain_png();
    let iend = base.len() - 12;
    let mut body = b"sd-ti-embedding\0".to_vec();
    body.extend(text.as_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(b"tEXt");
    crc.update(&body);
    let mut late = base[..iend].to_vec();
    late.extend((body.len() as u32).to_be_bytes());
    late.extend(b"tEXt");
    late.extend(&body);
    late.extend(crc.sum().to_be_bytes());
    late.extend(&base[iend..]);
    assert_eq!(read_embedding(&late, "late.png", None).unwrap().vectors, emb.vectors);
    // a chunk that is not base64 JSON
    let mut bad = base[..iend].to_vec();
    let body = b"sd-ti-embedding\0!!not base64!!".to_vec();
    let mut crc = flate2::Crc::new();
    crc.update(b"tEXt");
    crc.update(&body);
    bad.extend((body.len() as u32).to_be_bytes());
    bad.extend(b"tEXt");
    bad.extend(&body);
    bad.extend(crc.sum().to_be_bytes());
    bad.extend(&base[iend..]);
    let (_, msg) = read_err(&bad, "bad.png");
    assert!(msg.contains("base64"), "{msg}");
    // a truncated PNG
    let (_, msg) = read_err(&z[..z.len() / 2], "cut.png");
    assert!(msg.contains("cut.png"), "{msg}");
}

// ---- other torch layouts (built here the way torch.save lays them out) ----

/// `torch._utils._rebuild_tensor_v2(('storage', <cls>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())`.
fn tensor_ops(p: &mut PickleWriter, cls: &str, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) {
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.mark();
    p.mark();
    p.str("storage");
    p.global("torch", cls);
    p.str(key);
    p.str("cpu");
    p.int(numel);
    p.tuple(5);
    p.op(b'Q');
    p.int(offset);
    p.int_tuple(size);
    p.int_tuple(stride);
    p.bool(false);
    p.global("collections", "OrderedDict");
    p.empty_tuple();
    p.reduce();
    p.tuple(6);
    p.reduce();
}

/// A diffusers `learned_embeds.bin`: `{"<tok>": tensor}`.
fn diffusers_bin_pickle(tok: &str, cls: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.str(tok);
    tensor_ops(&mut p, cls, "0", numel, offset, size, stride);
    p.op(b's');
    p.stop()
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn diffusers_bin_zip_with_f16_strided_and_offset_tensors() {
    let want = diffusers_rows(2);
    // contiguous f32
    let pkl = diffusers_bin_pickle("<chelsea>", "FloatStorage", 64, 0, &[2, 32], &[32, 1]);
    let bin = write_zip("learned_embeds", &pkl, &[("0", &le_f32(&want.vectors))]);
    let got = read_embedding_with_meta(&bin, "learned_embeds.bin", None).unwrap();
    assert_eq!((got.source, got.embedding.clone()), (SourceFormat::DiffusersPickle, want.clone()));
    // 1-D [D] (older diffusers) with a storage offset
    let mut storage = vec![9.0f32; 5];
    storage.extend(&want.vectors[32..]);
    let pkl = diffusers_bin_pickle("<one>", "FloatStorage", 37, 5, &[32], &[1]);
    let got = read_embedding(&write_zip("archive", &pkl, &[("0", &le_f32(&storage))]), "x.bin", None).unwrap();
    assert_eq!((got.token.as_str(), got.n, &got.vectors[..]), ("<one>", 1, &want.vectors[32..]));
    // non-contiguous: the [2, 32] rows stored transposed ([32, 2] memory, stride (1, 2))
    let mut t = vec![0f32; 64];
    for r in 0..2 {
        for c in 0..32 {
            t[c * 2 + r] = want.vectors[r * 32 + c];
        }
    }
    let pkl = diffusers_bin_pickle("<chelsea>", "FloatStorage", 64, 0, &[2, 32], &[1, 2]);
    let got = read_embedding(&write_zip("archive", &pkl, &[("0", &le_f32(&t))]), "t.bin", None).unwrap();
    assert_eq!(got.vectors, want.vectors);
    // f16 and bf16 storages
    let h: Vec<u8> = want.vectors.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let pkl = diffusers_bin_pickle("<chelsea>", "HalfStorage", 64, 0, &[2, 32], &[32, 1]);
    let got = read_embedding(&write_zip("archive", &pkl, &[("0", &h)]), "h.bin", None).unwrap();
    let expect: Vec<f32> = want.vectors.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    assert_eq!(got.vectors, expect);
    let b: Vec<u8> = want.vectors.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let pkl = diffusers_bin_pickle("<chelsea>", "BFloat16Storage", 64, 0, &[2, 32], &[32, 1]);
    let got = read_embedding(&write_zip("archive", &pkl, &[("0", &b)]), "b.bin", None).unwrap();
    let expect: Vec<f32> = want.vectors.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_eq!(got.vectors, expect);
}

#[test]
fn legacy_non_zip_torch_file_is_read() {
    let want = diffusers_rows(2);
    let mut f = Vec::new();
    // magic number, protocol version, sys_info, as torch's _legacy_save writes them
    f.extend([0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.']);
    let mut p = PickleWriter::new();
    p.int(1001);
    f.extend(p.stop());
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.mark();
    p.str("protocol_version");
    p.int(1001);
    p.str("little_endian");
    p.bool(true);
    p.op(b'u');
    f.extend(p.stop());
    // the object: {"<chelsea>": tensor}, persistent id with a 6th `view_metadata` None
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.str("<chelsea>");
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.mark();
    p.mark();
    p.str("storage");
    p.global("torch", "FloatStorage");
    p.str("94113");
    p.str("cpu");
    p.int(64);
    p.none();
    p.tuple(6);
    p.op(b'Q');
    p.int(0);
    p.int_tuple(&[2, 32]);
    p.int_tuple(&[32, 1]);
    p.bool(false);
    p.global("collections", "OrderedDict");
    p.empty_tuple();
    p.reduce();
    p.tuple(6);
    p.reduce();
    p.op(b's');
    f.extend(p.stop());
    let mut p = PickleWriter::new();
    p.op(b']');
    p.put();
    p.str("94113");
    p.op(b'a');
    f.extend(p.stop());
    f.extend(64u64.to_le_bytes());
    f.extend(le_f32(&want.vectors));
    let got = read_embedding_with_meta(&f, "learned_embeds.bin", None).unwrap();
    assert_eq!((got.source, got.embedding.clone()), (SourceFormat::DiffusersPickle, want));
    // cut anywhere: an error, never a panic
    for cut in 0..f.len() {
        assert!(read_embedding(&f[..cut], "cut.bin", None).is_err(), "cut at {cut}");
    }
}

#[test]
fn original_textual_inversion_parameter_dict_is_read() {
    // rinongal/textual_inversion: string_to_param is a torch.nn.ParameterDict (pickled as an object
    // with state) holding a Parameter; string_to_token maps '*' to a 0-d LongStorage tensor.
    let want = diffusers_rows(1);
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.mark();
    p.str("string_to_token");
    p.empty_dict();
    p.str("*");
    tensor_ops(&mut p, "LongStorage", "1", 1, 0, &[], &[]);
    p.op(b's');
    p.str("string_to_param");
    p.global("torch.nn.modules.container", "ParameterDict");
    p.empty_tuple();
    p.op(0x81); // NEWOBJ
    p.put();
    p.empty_dict();
    p.mark();
    p.str("training");
    p.bool(true);
    p.str("_parameters");
    p.global("collections", "OrderedDict");
    p.empty_tuple();
    p.reduce();
    p.str("*");
    p.global("torch._utils", "_rebuild_parameter");
    tensor_ops(&mut p, "FloatStorage", "0", 32, 0, &[1, 32], &[32, 1]);
    p.bool(true);
    p.global("collections", "OrderedDict");
    p.empty_tuple();
    p.reduce();
    p.tuple(3);
    p.reduce();
    p.op(b's');
    p.str("_buffers");
    p.global("collections", "OrderedDict");
    p.empty_tuple();
    p.reduce();
    p.str("_non_persistent_buffers_set");
    p.global("builtins", "set");
    p.op(b']');
    p.tuple(1);
    p.reduce();
    p.op(b'u');
    p.op(b'b'); // BUILD
    p.op(b'u');
    let pkl = p.stop();
    let long = 265i64.to_le_bytes();
    let f = write_zip("archive", &pkl, &[("0", &le_f32(&want.vectors)), ("1", &long)]);
    let got = read_embedding_with_meta(&f, "ldm.pt", Some("<chelsea>")).unwrap();
    assert_eq!((got.source, got.embedding.clone()), (SourceFormat::A1111Pickle, want));
    assert_eq!(read_embedding(&f, "ldm.pt", None).unwrap().token, "ldm", "no name: the file stem");
}

// ---- hostile inputs ----

/// A protocol-2 pickle calling `module.name(arg)`.
fn call_pickle(module: &str, name: &str, arg: &str) -> Vec<u8> {
    let mut p = PickleWriter::new();
    p.global(module, name);
    p.str(arg);
    p.tuple(1);
    p.reduce();
    p.stop()
}

#[test]
fn globals_outside_the_allow_list_are_refused_by_name() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (call_pickle("os", "system", "echo pwned"), "os.system"),
        (call_pickle("builtins", "eval", "__import__('os')"), "builtins.eval"),
        (call_pickle("torch.storage", "_load_from_bytes", "x"), "torch.storage._load_from_bytes"),
        (call_pickle("subprocess", "Popen", "sh"), "subprocess.Popen"),
        // STACK_GLOBAL (protocol 4 style)
        (
            {
                let mut v = vec![0x80, 4];
                v.extend([0x8c, 8]);
                v.extend(b"builtins");
                v.extend([0x8c, 4]);
                v.extend(b"exec");
                v.extend([0x93, 0x8c, 1, b'1', 0x85, b'R', b'.']);
                v
            },
            "builtins.exec",
        ),
    ];
    for (pkl, global) in cases {
        for (bytes, name) in [(pkl.clone(), "evil.pt"), (write_zip("archive", &pkl, &[]), "evil_zip.pt")] {
            let (e, msg) = read_err(&bytes, name);
            assert!(matches!(&e, EmbeddingError::UnsafePickle { global: g, .. } if g == global), "{name}: {msg}");
            assert!(msg.contains(global) && msg.contains(name) && msg.contains("nothing in the file is executed"), "{msg}");
        }
    }
    // hidden inside an otherwise valid A1111 structure (as the `name` value)
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.str("name");
    p.global("posix", "system");
    p.str("id");
    p.tuple(1);
    p.reduce();
    p.op(b's');
    let (_, msg) = read_err(&write_zip("archive", &p.stop(), &[]), "x.pt");
    assert!(msg.contains("posix.system"), "{msg}");
}

#[test]
fn malformed_pickles_are_errors_without_panics_or_big_allocations() {
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("memo read before write", b"\x80\x02h\x05.".to_vec(), "memo"),
        ("long memo read", b"\x80\x02j\xff\xff\xff\x7f.".to_vec(), "memo"),
        ("stack underflow", b"\x80\x02s.".to_vec(), "underflow"),
        ("pop below mark", b"\x80\x02}(s.".to_vec(), "underflow"),
        ("setitems without mark", b"\x80\x02}u.".to_vec(), "MARK"),
        ("empty stop", b"\x80\x02.".to_vec(), "underflow"),
        ("no stop", b"\x80\x02}".to_vec(), "STOP"),
        ("huge BINUNICODE", b"\x80\x02X\xff\xff\xff\xffabc".to_vec(), "truncated"),
        ("huge BINBYTES8", b"\x80\x02\x8e\xff\xff\xff\xff\xff\xff\xff\x7fabc".to_vec(), "truncated"),
        ("huge BINUNICODE8", b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xffabc".to_vec(), ""),
        ("huge LONG4", b"\x80\x02\x8b\xff\xff\xff\x7f\x00.".to_vec(), "too large"),
        ("text opcode", b"\x80\x02S'abc'\n.".to_vec(), "opcode"),
        ("bad utf8", b"\x80\x02X\x02\x00\x00\x00\xff\xfe.".to_vec(), "UTF-8"),
        ("unterminated global", b"\x80\x02ctorch".to_vec(), "GLOBAL"),
        ("append to a dict", b"\x80\x02}K\x01a.".to_vec(), "not a list"),
        ("unknown protocol", b"\x80\x09}.".to_vec(), "protocol"),
    ];
    // a list containing itself
    cases.push(("cycle", b"\x80\x02]q\x00h\x00a.".to_vec(), "deeper"));
    // 100k nested tuples: refused, no stack overflow when converting or dropping
    let mut deep = vec![0x80, 2, b'N'];
    deep.extend(std::iter::repeat_n(0x85u8, 100_000));
    deep.push(b'.');
    cases.push(("deep nesting", deep, "deeper"));
    // 64 levels of (x, x): 2^64 nodes once shared references are expanded
    let mut dag = vec![0x80, 2, b'N'];
    for _ in 0..64 {
        dag.extend([b'2', 0x86]);
    }
    dag.push(b'.');
    cases.push(("exponential sharing", dag, "values"));
    for (what, pkl, needle) in cases {
        for (bytes, name) in [(pkl.clone(), "bad.pt"), (write_zip("archive", &pkl, &[]), "bad_zip.pt")] {
            let ((e, msg), largest) = largest_allocation(|| read_err(&bytes, name));
            assert!(matches!(e, EmbeddingError::BadTorchFile { .. } | EmbeddingError::UnsupportedFormat { .. }), "{what}: {msg}");
            assert!(msg.contains(needle), "{what}: {msg}");
            // every allocation is bounded by the bytes that are there (objects the opcodes create), never by a declared size
            assert!(largest < (1 << 20) + 64 * bytes.len(), "{what}: allocated {largest} bytes for a {}-byte input", bytes.len());
        }
    }
}

#[test]
fn lying_tensor_headers_are_errors_without_big_allocations() {
    let data = le_f32(&[0.5; 64]);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        // storage declares 2^40 elements, the file has 64
        (
            "huge storage",
            diffusers_bin_pickle("<t>", "FloatStorage", 1 << 40, 0, &[1 << 20, 1 << 20], &[1 << 20, 1]),
            data.clone(),
            "bytes",
        ),
        // view beyond its storage
        ("view past storage", diffusers_bin_pickle("<t>", "FloatStorage", 64, 40, &[2, 32], &[32, 1]), data.clone(), "reaches element"),
        // zero strides expanding one element into 2^40
        (
            "zero stride",
            diffusers_bin_pickle("<t>", "FloatStorage", 64, 0, &[1 << 20, 1 << 20], &[0, 0]),
            data.clone(),
            "larger than its storage",
        ),
        // overflowing strides
        ("overflow", diffusers_bin_pickle("<t>", "FloatStorage", 64, 0, &[4, 2], &[i64::MAX, 1]), data.clone(), "overflow"),
        // storage file shorter than declared
        ("short storage", diffusers_bin_pickle("<t>", "FloatStorage", 64, 0, &[2, 32], &[32, 1]), data[..100].to_vec(), "bytes"),
        // integer storage as embedding
        ("int tensor", diffusers_bin_pickle("<t>", "LongStorage", 32, 0, &[1, 32], &[32, 1]), data.clone(), "floating point"),
        // 3-D
        ("rank 3", diffusers_bin_pickle("<t>", "FloatStorage", 64, 0, &[2, 2, 16], &[32, 16, 1]), data.clone(), "shape"),
    ];
    for (what, pkl, storage, needle) in cases {
        let bytes = write_zip("archive", &pkl, &[("0", &storage)]);
        let ((_, msg), largest) = largest_allocation(|| read_err(&bytes, "lie.bin"));
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(largest < 8 << 20, "{what}: allocated {largest} bytes");
    }
    // NaN values are refused like in safetensors files
    let pkl = diffusers_bin_pickle("<t>", "FloatStorage", 2, 0, &[2], &[1]);
    let (_, msg) = read_err(&write_zip("archive", &pkl, &[("0", &le_f32(&[1.0, f32::NAN]))]), "nan.bin");
    assert!(msg.contains("NaN"), "{msg}");
    // a zip that is not a torch file, and a dict with the wrong contents
    let (_, msg) = read_err(&write_zip("archive", b"", &[]).iter().map(|&b| if b == b'p' { b'q' } else { b }).collect::<Vec<_>>(), "w.pt");
    assert!(msg.contains("data.pkl") || msg.contains("zip"), "{msg}");
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.str("clip_l");
    p.int(1);
    p.op(b's');
    let (_, msg) = read_err(&write_zip("archive", &p.stop(), &[]), "sdxl.pt");
    assert!(msg.contains("SDXL"), "{msg}");
}

#[test]
fn truncated_or_corrupted_torch_zips_never_panic() {
    let fx = fixture("chelsea-a1111-2vec.pt");
    for cut in 0..fx.len() {
        let r = read_embedding(&fx[..cut], "cut.pt", Some("<chelsea>"));
        assert!(r.is_err(), "cut at {cut} still loaded");
    }
    let (e, msg) = read_err(&fx[..fx.len() / 2], "half.pt");
    assert!(matches!(e, EmbeddingError::BadTorchFile { .. }), "{msg}");
    assert!(msg.contains("half.pt") && msg.contains("zip"), "{msg}");
    // byte flips everywhere: errors or (where the flip only hits padding/metadata) loads, never a panic
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let mut b = fx.clone();
        let i = ((rng.next_f32() + 1.0) / 2.0 * (b.len() - 1) as f32) as usize;
        b[i] ^= 1 << ((rng.next_f32() + 1.0) * 3.9) as u32;
        let (_, largest) = largest_allocation(|| {
            let _ = read_embedding(&b, "flip.pt", None);
        });
        assert!(largest < 8 << 20, "flip at {i}: allocated {largest}");
    }
    // and through the pickle alone: every prefix of data.pkl
    let entries = zip_entries(&fx);
    let (_, pkl) = entries.iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap();
    assert!(unpickle(pkl).is_ok());
    for cut in 0..pkl.len() {
        assert!(unpickle(&pkl[..cut]).is_err(), "pickle cut at {cut}");
    }
}

/// Inputs `cargo fuzz` found (fuzz/README.md), each once a panic, an oversized allocation or a
/// wrong `Ok`: now typed errors naming the file.
#[test]
fn fuzz_found_inputs_are_errors() {
    // png_embedding: a bare PNG signature made `embed_in_png` return Ok without the embedding
    let emb = sample_embedding(1, 4, "<t>");
    let e = embed_in_png(b"\x89PNG\r\n\x1a\n", "sig.png", &emb, &A1111Meta::default()).unwrap_err().to_string();
    assert!(e.contains("sig.png") && e.contains("IHDR"), "{e}");

    // pickle: a legacy torch file whose storage `0` is used by a DoubleStorage tensor (the
    // embedding) and by a HalfStorage one (`step`): the storage was sized in 2-byte elements,
    // the embedding read 8-byte ones past its end (a slice panic)
    let mut f = vec![0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
    let mut p = PickleWriter::new();
    p.int(1001);
    f.extend(p.stop());
    let mut p = PickleWriter::new();
    p.empty_dict();
    f.extend(p.stop());
    let mut p = PickleWriter::new();
    p.empty_dict();
    p.str("string_to_param");
    p.empty_dict();
    p.str("*");
    tensor_ops(&mut p, "DoubleStorage", "0", 4, 0, &[4], &[1]);
    p.op(b's');
    p.op(b's');
    p.str("step");
    tensor_ops(&mut p, "HalfStorage", "0", 4, 0, &[4], &[1]);
    p.op(b's');
    f.extend(p.stop());
    let mut p = PickleWriter::new();
    p.op(b']');
    p.str("0");
    p.op(b'a');
    f.extend(p.stop());
    f.extend(4u64.to_le_bytes());
    f.extend([0u8; 8]);
    let (e, msg) = read_err(&f, "mixed.pt");
    assert!(matches!(e, EmbeddingError::BadTorchFile { .. }), "{msg}");
    assert!(msg.contains("mixed.pt") && msg.contains("has 8 bytes but the tensor needs 32"), "{msg}");

    // pickle: shared references that multiply memory. A 64 KiB string listed 100 times (the
    // unpickled value copied it each time: a 1 MB file took > 2 GB) ...
    let mut pkl = vec![0x80, 2, b'X'];
    pkl.extend((64u32 << 10).to_le_bytes());
    pkl.extend(vec![b'a'; 64 << 10]);
    pkl.extend(b"q\x00(");
    pkl.extend(b"h\x00".repeat(100));
    pkl.extend(b"l.");
    let (_, msg) = read_err(&write_zip("archive", &pkl, &[]), "strings.pt");
    assert!(msg.contains("bytes of strings after expanding shared references"), "{msg}");
    // ... and `OrderedDict(l)` over one list of 16k pairs called 300 times (a 60 KB file took > 2 GB)
    let mut pkl = b"\x80\x02ccollections\nOrderedDict\nq\x00K\x01K\x02\x86q\x01(".to_vec();
    pkl.extend(b"h\x01".repeat(16_000));
    pkl.extend(b"lq\x02");
    pkl.extend(b"h\x00h\x02\x85R0".repeat(300));
    pkl.extend(b"N.");
    let (_, msg) = read_err(&write_zip("archive", &pkl, &[]), "dicts.pt");
    assert!(msg.contains("containers with more than"), "{msg}");
    // a dict of 50k distinct keys: merging repeated keys compared each key with all others
    // (minutes for a 1 MB file)
    let mut pkl = b"\x80\x02}(".to_vec();
    for i in 0..50_000 {
        let k = format!("k{i}");
        pkl.push(b'X');
        pkl.extend((k.len() as u32).to_le_bytes());
        pkl.extend(k.as_bytes());
        pkl.push(b'N');
    }
    pkl.extend(b"u.");
    let t = std::time::Instant::now();
    let (_, msg) = read_err(&write_zip("archive", &pkl, &[]), "keys.pt");
    assert!(msg.contains("no embedding in it") && msg.contains("k0"), "{msg}");
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
    let dict = unpickle(&pkl).unwrap().0;
    assert_eq!(dict.dict_items().unwrap().len(), 50_000);
}

// ---- the CLI ----

fn pw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pseudoword")).args(args).output().unwrap()
}

#[test]
fn convert_embedding_cli_round_trips_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let want = diffusers_rows(2);
    let src = emb_dir().join("chelsea-a1111-2vec.pt");
    let mut prev = src.clone();
    for f in ["a1111-png", "a1111", "diffusers", "a1111-pt"] {
        let fmt: EmbeddingFormat = f.parse().unwrap();
        let out = dir.path().join(format!("step-{f}.{}", fmt.extension()));
        let o = pw(&["convert-embedding", prev.to_str().unwrap(), "--out", out.to_str().unwrap(), "--format", f, "--token", "<chelsea>"]);
        assert!(o.status.success(), "{f}: {}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8(o.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(j["in"], prev.display().to_string());
        assert_eq!(j["out"], out.display().to_string());
        assert_eq!(j["format"], f);
        assert_eq!(j["token"], "<chelsea>");
        assert_eq!((j["vectors"].as_u64(), j["dim"].as_u64()), (Some(2), Some(32)));
        let e = read_embedding_file(&out, Some("<chelsea>")).unwrap();
        assert_eq!(e.vectors, want.vectors, "{f}");
        prev = out;
    }
    // the token given on the command line names the A1111 output
    let out = dir.path().join("named.pt");
    let o =
        pw(&["convert-embedding", src.to_str().unwrap(), "--out", out.to_str().unwrap(), "--format", "a1111-pt", "--name", "chelsea-cat"]);
    assert!(o.status.success());
    let l = read_embedding_with_meta(&std::fs::read(&out).unwrap(), "named.pt", None).unwrap();
    assert_eq!((l.embedding.token.as_str(), l.meta.step), ("chelsea-cat", Some(5)));
    // errors: unknown format, hostile input
    let o = pw(&["convert-embedding", src.to_str().unwrap(), "--out", "x", "--format", "ckpt"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("a1111-pt"));
    let evil = dir.path().join("evil.pt");
    std::fs::write(&evil, call_pickle("os", "system", "touch /tmp/pwned")).unwrap();
    let o = pw(&["convert-embedding", evil.to_str().unwrap(), "--out", dir.path().join("o").to_str().unwrap(), "--format", "diffusers"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("os.system"));
    assert!(!Path::new(&dir.path().join("o")).exists());
}
