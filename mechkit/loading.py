"""`mechkit.load`: one Subject from a model id, whatever the source and backend, without contacting a hub."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mechkit.errors import MechkitError, UnknownModelError
from mechkit.models.registry import REGISTRY, get_spec, known_ids
from mechkit.subject import Subject

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
BACKENDS = ("auto", "tl", "nnsight")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a name such as "float32"; anything else is refused with the supported names."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise MechkitError(f"unsupported dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def _hf_from_dir(directory: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    # Soft-capped logits are only computed by the eager attention path.
    attn = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True,
                                                 attn_implementation=attn)
    return model.eval(), AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _source(model_id: str, dtype: torch.dtype):
    """(hf_model, tokenizer, tl_official_name, prepend_bos, weights_sha256) for any accepted model id."""
    from mechkit.models.packaged import model_dir, weights_sha256
    from mechkit.models.tiny import tiny_model

    if model_id.startswith("tiny:"):
        model, tokenizer = tiny_model(model_id.split(":", 1)[1], dtype=dtype)
        return model, tokenizer, None, True, None
    if model_id in REGISTRY:
        spec = get_spec(model_id)
        directory = model_dir(model_id)
        model, tokenizer = _hf_from_dir(directory, dtype)
        return model, tokenizer, spec.tl_official_name, spec.prepend_bos, weights_sha256(model_id)
    path = Path(model_id).expanduser()
    if (path / "config.json").is_file():
        model, tokenizer = _hf_from_dir(path, dtype)
        return model, tokenizer, None, tokenizer.bos_token_id is not None, None
    local = _hf_cache_dir(model_id)
    if local is not None:  # a hub name whose files are already in the local Hugging Face cache
        model, tokenizer = _hf_from_dir(local, dtype)
        return model, tokenizer, _tl_official(model_id), tokenizer.bos_token_id is not None, None
    raise UnknownModelError(
        f"unknown model {model_id!r}: use one of {', '.join(known_ids())}, a local Hugging Face directory, "
        "a hub name already in the local Hugging Face cache, or tiny:llama / tiny:gemma3"
    )


def _hf_cache_dir(name: str) -> Path | None:
    """The local snapshot directory of a hub model already in the Hugging Face cache, without any network call."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        directory = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None
    return directory if (directory / "config.json").is_file() else None


def _tl_official(name: str) -> str | None:
    """TransformerLens' official name for a hub name, when it has a built-in config for it."""
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    return name if name in OFFICIAL_MODEL_NAMES else None


def _tl_matches_hf(tl_model, hf_model) -> float:
    """Largest logit difference between the two on a fixed 8-token input (a conversion sanity check)."""
    tokens = torch.arange(1, 9)[None] % hf_model.config.vocab_size
    with torch.no_grad():
        expected = hf_model(tokens).logits.float()
        got = tl_model(tokens).float()
    return float((expected - got).abs().max() / expected.abs().max().clamp(min=1e-6))


def load(
    model_id: str,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
) -> Subject:
    """Load `model_id` (a registered id, a local HF directory, a hub name already in the local Hugging Face
    cache, tiny:<name>, or native:<zoo name or checkpoint directory>) as a Subject.

    backend "auto" uses TransformerLens when it can convert the model exactly (checked on a short input at
    load time) and nnsight over the Hugging Face model otherwise. Never contacts a model hub.
    """
    if backend not in BACKENDS:
        raise MechkitError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    dtype = parse_dtype(dtype)
    if model_id.startswith("native:"):
        if backend != "auto":
            raise MechkitError(f"{model_id} runs on mechkit's native backend; call load with backend='auto'")
        from mechkit.backends.native import load_native

        return load_native(model_id.split(":", 1)[1], device=device, dtype=dtype)
    hf_model, tokenizer, tl_name, prepend_bos, sha = _source(model_id, dtype)
    hf_model = hf_model.to(device)
    common = dict(model_id=model_id, config=hf_model.config, tokenizer=tokenizer, prepend_bos=prepend_bos,
                  weights_sha256=sha)
    if backend in ("auto", "tl"):
        from mechkit.backends.tl import TLSubject, hooked_transformer

        try:
            tl_model = hooked_transformer(hf_model, tokenizer, tl_name, dtype, device)
            error = _tl_matches_hf(tl_model, hf_model)
            if error > 1e-3:
                raise MechkitError(f"TransformerLens' conversion of {model_id} disagrees with Hugging Face "
                                   f"(relative logit error {error:.1e}); use backend='nnsight'")
            return TLSubject(tl_model, **common)
        except (NotImplementedError, KeyError, MechkitError) as err:
            if backend == "tl":
                raise MechkitError(f"TransformerLens cannot load {model_id}: {err}; use backend='nnsight'") from err
            log.warning("TransformerLens cannot load %s (%s); using the nnsight backend", model_id, err)
    from mechkit.backends.hf_nnsight import NNsightSubject

    return NNsightSubject(hf_model, **common)
