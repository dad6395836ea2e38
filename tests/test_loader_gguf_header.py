"""jevons's GGUF header parser against gguf.GGUFReader (llama.cpp's Python
reader): every metadata value type, the tensor table and the tensor bytes."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from loader_fixtures import Q, gguf, smollm2_gguf
from jevons.loader.gguf_header import read_gguf


def assert_same_as_gguf_reader(path: pathlib.Path) -> None:
    meta, tensors = read_gguf(str(path))
    reader = gguf.GGUFReader(str(path), "r")
    want = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert meta.keys() == want.keys()
    for key, value in want.items():
        assert meta[key] == value, key
    assert list(tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        ours = tensors[t.name]
        assert ours.tensor_type == t.tensor_type and ours.shape.tolist() == t.shape.tolist()
        assert ours.data.dtype == t.data.dtype and ours.data.shape == t.data.shape
        assert np.array_equal(np.asarray(ours.data).view(np.uint8), np.asarray(t.data).view(np.uint8))


def test_every_value_type_and_tensor_type(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "kinds.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1 / 3)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, 0.25])
    w.add_array("t.strs", ["a", "", "ünï", "b c"])
    w.add_array("t.empty", [])
    rng = np.random.default_rng(0)
    values = rng.standard_normal((4, 256)).astype(np.float32)
    for kind in (Q.F32, Q.F16, Q.Q8_0, Q.Q4_K):
        raw = values.astype(np.float16) if kind == Q.F16 else values
        if kind == Q.Q4_K:
            raw = rng.integers(0, 256, (4, 144), dtype=np.uint8)
        elif kind == Q.Q8_0:
            raw = gguf.quants.quantize(values, kind)
        w.add_tensor(f"w.{kind.name}", raw, raw_dtype=None if kind in (Q.F32, Q.F16) else kind)
    w.add_tensor("w.3d", values.reshape(2, 2, 256))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_same_as_gguf_reader(path)


def test_embedded_smollm2_matches_gguf_reader() -> None:
    assert_same_as_gguf_reader(smollm2_gguf())


def test_truncated_and_foreign_files_fail_clearly(tmp_path: pathlib.Path) -> None:
    src = smollm2_gguf().read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src[: len(src) // 2])
    with pytest.raises(ValueError, match="past the end"):
        read_gguf(str(cut))
    other = tmp_path / "other.gguf"
    other.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF"):
        read_gguf(str(other))
