#!/usr/bin/env python3
"""Writes the committed seed corpora fuzz/corpus/<target>/seed-* from the test fixtures plus a
few synthetic files (PNG tEXt/zTXt/iTXt embeddings, a legacy torch file, truncated headers).
Standard library only; deterministic. Run from anywhere: python3 fuzz/make_seeds.py"""
import base64, json, struct, zipfile, zlib, io
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMB = ROOT / "tests/fixtures/embeddings"
CORPUS = ROOT / "fuzz/corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + blob


def f32(vals):
    return struct.pack(f"<{len(vals)}f", *vals)


# ---- safetensors
st = {p.name: p.read_bytes() for p in sorted(EMB.glob("*.safetensors"))}
st["embeddings_loaded.safetensors"] = (ROOT / "tests/fixtures/tiny-sd1/goldens/embeddings_loaded.safetensors").read_bytes()
te = (ROOT / "tests/fixtures/tiny-sd1/text_encoder/model.safetensors").read_bytes()
n = struct.unpack("<Q", te[:8])[0]
st["text_encoder-header-only.safetensors"] = te[: 8 + n]  # a real model header, data cut off
st["f16-bf16-i64.safetensors"] = safetensors(
    {"a": ("F16", [2, 2], b"\x00\x3c" * 4), "b": ("BF16", [3], b"\x80\x3f" * 3), "c": ("I64", [1], b"\x01" + b"\x00" * 7)},
    {"format": "pt"},
)
st["emb_params-1d.safetensors"] = safetensors({"emb_params": ("F32", [4], f32([0.1, -0.2, 0.3, 4.0]))}, {"name": "x", "step": "5"})
for name, data in st.items():
    put("safetensors_header", name, data)

# ---- torch checkpoints and pickles
pt = {p.name: p.read_bytes() for p in sorted(EMB.glob("*.pt"))}
for name, data in pt.items():
    put("pickle", name, data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        put("pickle", name.replace(".pt", "-data.pkl"), z.read(pkl))


def legacy_torch():
    """A legacy (non-zip) torch file: {"<t>": FloatStorage tensor [2, 4]} (cf. tests/embedding_files.rs)."""
    f = bytes([0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]) + b"."
    f += b"\x80\x02M\xe9\x03."  # 1001
    f += b"\x80\x02}(X\x10\x00\x00\x00protocol_versionM\xe9\x03X\r\x00\x00\x00little_endian\x88u."
    s = lambda t: b"X" + struct.pack("<I", len(t)) + t.encode()
    obj = b"\x80\x02}" + s("<t>") + b"ctorch._utils\n_rebuild_tensor_v2\n(("
    obj += s("storage") + b"ctorch\nFloatStorage\n" + s("0") + s("cpu") + b"K\x08Nt" + b"Q"
    obj += b"K\x00K\x02K\x04\x86K\x04K\x01\x86\x89ccollections\nOrderedDict\n)Rt" + b"R" + b"s."
    f += obj
    f += b"\x80\x02]" + s("0") + b"a."
    f += struct.pack("<Q", 8) + f32([0.5, -1, 2, 0.25, 1e-3, 3, -4, 0])
    return f


put("pickle", "legacy.bin", legacy_torch())


def legacy_mixed_dtypes():
    """Storage 0 used by a DoubleStorage tensor (the embedding) and a HalfStorage one (`step`)."""
    s = lambda t: b"X" + struct.pack("<I", len(t)) + t.encode()
    f = bytes([0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]) + b"."
    f += b"\x80\x02M\xe9\x03." + b"\x80\x02}."

    def tensor(cls):
        o = b"ctorch._utils\n_rebuild_tensor_v2\n((" + s("storage") + b"ctorch\n" + cls + b"\n" + s("0") + s("cpu")
        return o + b"K\x04NtQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR"

    f += b"\x80\x02}" + s("string_to_param") + b"}" + s("*") + tensor(b"DoubleStorage") + b"ss" + s("step") + tensor(b"HalfStorage") + b"s."
    return f + b"\x80\x02]" + s("0") + b"a." + struct.pack("<Q", 4) + struct.pack("<4e", 1, 2, 3, 4)


put("pickle", "legacy-mixed-dtypes.bin", legacy_mixed_dtypes())


# ---- PNGs
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(text_chunks_before=(), text_chunks_after=()):
    ihdr = struct.pack(">IIBBBBB", 2, 1, 8, 0, 0, 0, 0)  # 2x1 grey
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    out += b"".join(text_chunks_before)
    out += chunk(b"IDAT", zlib.compress(b"\x00\x10\x80"))
    out += b"".join(text_chunks_after)
    return out + chunk(b"IEND", b"")


def a1111_json(rows, name="chelsea"):
    return json.dumps({"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": rows}},
                       "name": name, "step": 7, "sd_checkpoint": "abc", "sd_checkpoint_name": "m"}).encode()


b64 = base64.b64encode(a1111_json([[0.5, -0.25, 1.0, 2.0], [0.0, 1e-5, -3.0, 4.5]]))
key = b"sd-ti-embedding\x00"
pngs = {
    "text.png": png([chunk(b"tEXt", key + b64)]),
    "ztxt.png": png([chunk(b"zTXt", key + b"\x00" + zlib.compress(b64))]),
    "itxt-after-idat.png": png((), [chunk(b"iTXt", key + b"\x00\x00\x00\x00" + b64)]),
    "1d.png": png([chunk(b"tEXt", key + base64.b64encode(a1111_json([0.5, 1.5, -2.0])))]),
    "plain.png": png([chunk(b"tEXt", b"Title\x00<x>")]),
}
for name, data in pngs.items():
    put("png_embedding", name, data)

# ---- read_embedding: first byte picks the file name (0 .safetensors, 1 .bin, 2 .pt, 3 .png, 4 none)
for sel, files in [(0, st), (2, pt), (1, {"legacy.bin": legacy_torch()}), (3, pngs)]:
    for name, data in files.items():
        if len(data) < 30_000:
            put("read_embedding", name, bytes([sel]) + data)
put("read_embedding", "override-token.pt", bytes([0x80 | 2]) + pt["chelsea-a1111-1vec.pt"])
