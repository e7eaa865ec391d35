"""NativeConfig: the shape of a mechkit native model, one mixer name per layer (a hybrid is a mixers tuple)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from mechkit.errors import MechkitError

KERNELS = ("chunk", "triton", "naive")


@dataclass(frozen=True)
class NativeConfig:
    """A native model: token embedding, `len(mixers)` pre-LayerNorm blocks, final LayerNorm, unembedding.

    mixers: one name of `mechkit.native.mixers.MIXERS` per layer, e.g. ("softmax", "based").
    d_mlp: hidden width of each block's GELU MLP; 0 leaves the MLP out (attention-only blocks, as Zoology's MQAR).
    ngram_orders: static n-gram layers (`mechkit.probes.ngram.NgramLayer`) added to the embedding, one per order.
    short_conv: kernel size of the causal depthwise convolution (+ SiLU) on q, k, v of recurrent mixers; 0: none.
    feature_dim: q/k width per head of Based mixers (the state has 1 + f + f² rows).
    window: keys a sliding_window layer's query sees (its own included).
    chunk_size: tokens per kernel chunk (hook_state holds the state entering each chunk).
    kernel: "chunk" (PyTorch, CPU and GPU), "triton" (GPU, or CPU with TRITON_INTERPRET=1) or "naive" (float64
    token loop); all compute the same function.
    token_names: the tokenizer's vocabulary, one word per id; empty: the decimal ids "0" .. "vocab_size - 1".
    """

    vocab_size: int
    mixers: tuple[str, ...]
    d_model: int = 64
    n_heads: int = 1
    d_head: int = 64
    context_length: int = 512
    d_mlp: int = 0
    ngram_orders: tuple[int, ...] = ()
    short_conv: int = 4
    feature_dim: int = 16
    window: int = 64
    chunk_size: int = 64
    kernel: str = "chunk"
    rotary_base: float = 10_000.0
    token_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from mechkit.native.mixers import MIXERS

        object.__setattr__(self, "mixers", tuple(self.mixers))
        object.__setattr__(self, "ngram_orders", tuple(self.ngram_orders))
        object.__setattr__(self, "token_names", tuple(self.token_names))
        unknown = sorted(set(self.mixers) - set(MIXERS))
        if not self.mixers or unknown:
            raise MechkitError(f"mixers {list(self.mixers)} must be a non-empty list of {', '.join(MIXERS)}; "
                               f"unknown: {unknown}")
        for name in ("vocab_size", "d_model", "n_heads", "d_head", "context_length", "feature_dim", "window",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise MechkitError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_mlp < 0 or self.short_conv < 0 or any(order < 1 for order in self.ngram_orders):
            raise MechkitError(f"d_mlp and short_conv must be >= 0 and n-gram orders >= 1, got {self.d_mlp}, "
                               f"{self.short_conv}, {list(self.ngram_orders)}")
        if self.kernel not in KERNELS:
            raise MechkitError(f"unknown kernel {self.kernel!r}; use one of {', '.join(KERNELS)}")
        names = self.token_names
        if names and (len(set(names)) != len(names) or len(names) != self.vocab_size
                      or any(t.split() != [t] for t in names)):
            raise MechkitError(f"token_names must be {self.vocab_size} distinct words without spaces (one per id), "
                               "or empty for decimal ids")

    @property
    def n_layers(self) -> int:
        return len(self.mixers)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "NativeConfig":
        """Inverse of `to_dict`; unknown or missing keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise MechkitError(f"unknown native model config keys {unknown}; the checkpoint was written by another "
                               "mechkit version, retrain or fix its config.json")
        try:
            return cls(**data)
        except TypeError as err:
            raise MechkitError(f"native model config {data} is incomplete ({err}); fix its config.json") from None
