"""tracr ground truths: compiled RASP programs as exact TransformerLens models with known head sets.

A registered RASP program is compiled by tracr (JAX, CPU) and its weights are copied into a
`HookedTransformer` unchanged: float32, as tracr assembles them (jax without x64), no layer norm, ReLU MLPs,
bidirectional attention scaled by 1/sqrt(d_head), zero biases, W_U the 0/1 projection onto the output space.
Position 0 holds tracr's compiler BOS token; sequences carry at most `max_seq_len` tokens after it.

True heads are read off the compiled craft model: each attention block of the craft model (a
`MultiAttentionHead` built from the program graph's Aggregate / SelectorWidth nodes) sits at one transformer
layer, and its i-th craft head is written into head slot i of that layer (tracr's `assemble`). Every other
slot is a zero-weight padding head (layers whose attention sublayer is unused, or layers with fewer heads than
the widest one). `head_ablation_changes` checks this: zero-ablating a true head changes the decoded output on
some input of the vocabulary, ablating a padding head never does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechkit.errors import MechkitError
from mechkit.heads import HeadId

try:
    import jax
    import jax.numpy as jnp
    from tracr.compiler import (
        assemble,
        basis_inference,
        craft_graph_to_model,
        craft_model_to_transformer,
        expr_to_craft_graph,
        lib,
        nodes,
        rasp_to_graph,
    )
    from tracr.craft import bases, transformers, vectorspace_fns
    from tracr.rasp import rasp

    _TRACR_IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # tracr is an optional dependency: mechkit[circuits]
    _TRACR_IMPORT_ERROR = exc


class UnknownTracrProgramError(MechkitError):
    """A tracr program name that is not in `PROGRAMS`."""


class TracrInputError(MechkitError):
    """Input tokens outside a compiled program's vocabulary or length."""


@dataclass(frozen=True)
class TracrSpec:
    """How to build and compile one RASP program."""

    name: str
    build: Callable[[], Any]  # () -> rasp.SOp
    vocab: frozenset
    max_seq_len: int
    compiler_bos: str = "BOS"
    description: str = ""


def _reverse() -> Any:
    return lib.make_reverse(rasp.tokens)  # uses lib.length (make_length)


def _sort() -> Any:
    return lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1)


def _hist() -> Any:
    return lib.make_hist()


def _frac_prevs() -> Any:
    return lib.make_frac_prevs(rasp.tokens == "x")


def _pair_balance() -> Any:
    return lib.make_pair_balance(rasp.tokens, "(", ")")


def _shuffle_dyck2() -> Any:
    return lib.make_shuffle_dyck2()


PROGRAMS: dict[str, TracrSpec] = {
    spec.name: spec
    for spec in (
        TracrSpec("reverse", _reverse, frozenset("abc"), 5, description="the tokens in reverse order"),
        TracrSpec("sort", _sort, frozenset({1, 2, 3}), 5, description="tokens sorted ascending (ties kept stable)"),
        TracrSpec("hist", _hist, frozenset("abc"), 5, description="how often each token occurs in the sequence"),
        TracrSpec("frac_prevs", _frac_prevs, frozenset("abx"), 5, description="fraction of tokens so far equal to 'x'"),
        TracrSpec("pair_balance", _pair_balance, frozenset("()"), 6, description="fraction of '(' minus ')' so far"),
        TracrSpec(
            "shuffle_dyck2", _shuffle_dyck2, frozenset("(){}"), 4, description="1 where '()' and '{}' are balanced"
        ),
    )
}


@dataclass
class TracrProgram:
    """A compiled RASP program: tracr's assembled model plus the craft model and graph it came from."""

    spec: TracrSpec
    program: Any  # rasp.SOp
    assembled: Any  # tracr AssembledTransformerModel
    craft_model: Any  # tracr SeriesWithResiduals
    graph: Any  # networkx DiGraph of the RASP program
    residual_space: Any  # bases.VectorSpaceWithBasis, in residual-stream order
    output_space: Any  # bases.VectorSpaceWithBasis
    categorical: bool
    head_labels: dict[HeadId, str] = field(default_factory=dict)  # true head -> RASP expression label
    forward: Any = None  # jax.jit of tracr's forward(params, ids)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_layers(self) -> int:
        return self.assembled.model_config.num_layers

    @property
    def n_heads(self) -> int:
        return self.assembled.model_config.num_heads


@dataclass
class TracrRun:
    """Outputs of one batch of equal-length sequences (position 0 is BOS in the arrays, dropped in `decoded`)."""

    decoded: list[list[Any]]  # [batch][seq_len]
    logits: np.ndarray  # [batch, 1 + seq_len, d_vocab_out]
    residuals: np.ndarray  # [1 + 2 * n_layers, batch, 1 + seq_len, d_model]: embeddings, then after each attn / mlp


def _require_tracr() -> None:
    if _TRACR_IMPORT_ERROR is not None:
        raise MechkitError(
            f"tracr is not importable ({_TRACR_IMPORT_ERROR}); install it with pip install 'mechkit[circuits]'."
        ) from _TRACR_IMPORT_ERROR


def get_spec(name: str) -> TracrSpec:
    """The registered spec called `name`; unknown names raise `UnknownTracrProgramError`."""
    if name not in PROGRAMS:
        raise UnknownTracrProgramError(f"unknown tracr program {name!r}; choose one of {', '.join(sorted(PROGRAMS))}.")
    return PROGRAMS[name]


def _sub_blocks(block: Any) -> Iterable[Any]:
    """Leaf craft blocks (heads and MLPs) inside a graph node's block."""
    if isinstance(block, transformers.SeriesWithResiduals):
        for sub in block.blocks:
            yield from _sub_blocks(sub)
    elif isinstance(block, transformers.MultiAttentionHead):
        yield from block.heads()
    elif block is not None:
        yield block


def _head_labels(craft_model: Any, graph: Any) -> dict[HeadId, str]:
    """Maps each real craft head to (layer, slot) as `assemble` places it, labelled by its graph node."""
    owner = {
        id(leaf): str(node_id)
        for node_id in graph.nodes
        for leaf in _sub_blocks(graph.nodes[node_id].get(nodes.MODEL_BLOCK))
    }
    _, module_names = assemble._get_model_config_and_module_names(craft_model)
    labels: dict[HeadId, str] = {}
    for module_name, block in zip(module_names, craft_model.blocks):
        if isinstance(block, transformers.MLP):
            continue
        layer = int(module_name.split("/")[1].removeprefix("layer_"))
        for slot, head in enumerate(block.as_multi().heads()):
            labels[HeadId(layer, slot)] = owner[id(head)]
    return labels


def compile_program(name: str) -> TracrProgram:
    """Compiles the registered RASP program `name` with tracr (a few seconds on CPU)."""
    spec = get_spec(name)
    _require_tracr()
    program = spec.build()
    # The steps of tracr.compiler.compiling.compile_rasp_to_model, keeping the graph and craft model.
    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, set(spec.vocab), spec.max_seq_len)
    bos_dir = bases.BasisDirection(rasp.tokens.label, spec.compiler_bos)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(graph, bos_dir=bos_dir)
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    pad = "compiler_pad"
    assembled = craft_model_to_transformer.craft_model_to_transformer(
        craft_model=craft_model,
        graph=graph,
        sink=sink,
        max_seq_len=spec.max_seq_len,
        compiler_bos=spec.compiler_bos,
        compiler_pad=pad,
    )
    # The spaces craft_model_to_transformer / assemble_craft_model build, for W_U.
    token_values = graph.nodes[rasp.tokens.label][nodes.VALUE_SET] | {spec.compiler_bos, pad}
    tokens_space = bases.VectorSpaceWithBasis.from_values(rasp.tokens.label, token_values)
    indices_space = bases.VectorSpaceWithBasis.from_values(rasp.indices.label, range(spec.max_seq_len))
    output_space = bases.VectorSpaceWithBasis(sink[nodes.OUTPUT_BASIS])
    residual_space = bases.join_vector_spaces(craft_model.residual_space, tokens_space, indices_space, output_space)
    if [str(d) for d in residual_space.basis] != assembled.residual_labels:
        raise RuntimeError(f"tracr program {name!r}: rebuilt residual space differs from the assembled model's.")
    return TracrProgram(
        spec=spec,
        program=program,
        assembled=assembled,
        craft_model=craft_model,
        graph=graph,
        residual_space=residual_space,
        output_space=output_space,
        categorical=rasp.is_categorical(sink[nodes.EXPR]),
        head_labels=_head_labels(craft_model, graph),
        forward=jax.jit(assembled.forward),
    )


def true_heads(compiled: TracrProgram) -> list[HeadId]:
    """Heads that implement a node of the program graph (sorted); all other slots are zero padding."""
    return sorted(compiled.head_labels)


def unembed_matrix(compiled: TracrProgram) -> Float[np.ndarray, "d_model d_vocab_out"]:
    """0/1 projection of the residual stream onto the output space (tracr's unembedding before argmax)."""
    return np.asarray(vectorspace_fns.project(compiled.residual_space, compiled.output_space).matrix)


def to_hooked_transformer(compiled: TracrProgram, dtype: torch.dtype = torch.float32) -> HookedTransformer:
    """A HookedTransformer holding tracr's weights exactly (float32 by default; float64 casts them exactly)."""
    config = compiled.assembled.model_config
    params = {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in compiled.assembled.params.items()}
    n_layers, n_heads = config.num_layers, config.num_heads
    W_E, W_pos, W_U = params["token_embed"]["embeddings"], params["pos_embed"]["embeddings"], unembed_matrix(compiled)
    mlp_params = [params[f"transformer/layer_{l}/mlp/linear_{i}"] for l in range(n_layers) for i in (1, 2)]
    attn_only = all(not p["w"].any() and not p["b"].any() for p in mlp_params)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=W_E.shape[1],
        d_head=config.key_size,
        n_heads=n_heads,
        d_mlp=None if attn_only else config.mlp_hidden_size,
        d_vocab=W_E.shape[0],
        d_vocab_out=W_U.shape[1],
        n_ctx=W_pos.shape[0],
        act_fn=None if attn_only else "relu",
        normalization_type=None,
        attn_only=attn_only,
        attention_dir="bidirectional",
        positional_embedding_type="standard",
        default_prepend_bos=False,
        init_weights=False,
        dtype=dtype,
        device="cpu",
        seed=0,
        model_name=f"tracr-{compiled.name}",
    )
    state: dict[str, np.ndarray] = {
        "embed.W_E": W_E,
        "pos_embed.W_pos": W_pos,
        "unembed.W_U": W_U,
        "unembed.b_U": np.zeros(W_U.shape[1]),
    }
    for l in range(n_layers):
        attn = f"transformer/layer_{l}/attn"
        for tl_name, tracr_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            p = params[f"{attn}/{tracr_name}"]
            state[f"blocks.{l}.attn.W_{tl_name}"] = einops.rearrange(p["w"], "d (h k) -> h d k", h=n_heads)
            state[f"blocks.{l}.attn.b_{tl_name}"] = einops.rearrange(p["b"], "(h k) -> h k", h=n_heads)
        state[f"blocks.{l}.attn.W_O"] = einops.rearrange(params[f"{attn}/linear"]["w"], "(h k) d -> h k d", h=n_heads)
        state[f"blocks.{l}.attn.b_O"] = params[f"{attn}/linear"]["b"]
        if not attn_only:
            mlp = f"transformer/layer_{l}/mlp"
            state[f"blocks.{l}.mlp.W_in"] = params[f"{mlp}/linear_1"]["w"]
            state[f"blocks.{l}.mlp.b_in"] = params[f"{mlp}/linear_1"]["b"]
            state[f"blocks.{l}.mlp.W_out"] = params[f"{mlp}/linear_2"]["w"]
            state[f"blocks.{l}.mlp.b_out"] = params[f"{mlp}/linear_2"]["b"]
    model = HookedTransformer(cfg, move_to_device=False)
    missing, unexpected = model.load_state_dict(
        {k: torch.tensor(v, dtype=dtype) for k, v in state.items()}, strict=False
    )
    params_left = [k for k in missing if k in dict(model.named_parameters())]
    if params_left or unexpected:
        raise RuntimeError(f"tracr conversion left parameters {params_left} unset and {unexpected} unused.")
    return model.eval()


def encode_inputs(compiled: TracrProgram, seqs: Sequence[Sequence[Any]]) -> np.ndarray:
    """Token ids `[batch, 1 + seq_len]` with BOS prepended; sequences must share one length in 1..max_seq_len."""
    spec = compiled.spec
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1 or not 1 <= next(iter(lengths)) <= spec.max_seq_len:
        raise TracrInputError(
            f"tracr program {spec.name!r} needs a non-empty batch of equal-length sequences of 1 to "
            f"{spec.max_seq_len} tokens; got lengths {sorted(lengths)}."
        )
    bad = {t for s in seqs for t in s} - set(spec.vocab)
    if bad:
        raise TracrInputError(
            f"tokens {sorted(map(repr, bad))} are not in the vocabulary of tracr program {spec.name!r}; "
            f"use tokens from {sorted(spec.vocab)}."
        )
    encoder = compiled.assembled.input_encoder
    return np.array([encoder.encode([spec.compiler_bos, *s]) for s in seqs], dtype=np.int64)


def all_inputs(compiled: TracrProgram, max_len: int | None = None) -> dict[int, list[tuple]]:
    """Every sequence over the vocabulary, by length 1..max_len (default max_seq_len)."""
    vocab = sorted(compiled.spec.vocab)
    top = compiled.spec.max_seq_len if max_len is None else max_len
    return {n: list(itertools.product(vocab, repeat=n)) for n in range(1, top + 1)}


def _decode(compiled: TracrProgram, values: np.ndarray) -> list[list[Any]]:
    """Decoded outputs from per-position argmax ids (categorical) or values (numerical), BOS position dropped."""
    rows = values[:, 1:].tolist()
    if compiled.categorical:
        return [compiled.assembled.output_encoder.decode(row) for row in rows]
    return rows


def run_tracr(compiled: TracrProgram, seqs: Sequence[Sequence[Any]]) -> TracrRun:
    """Runs tracr's own (JAX, jitted) forward on a batch of equal-length sequences."""
    ids = encode_inputs(compiled, seqs)
    out = compiled.forward(compiled.assembled.params, jnp.asarray(ids))
    t = out.transformer_output
    residuals = np.stack([np.asarray(t.input_embeddings)] + [np.asarray(r) for r in t.residuals])
    logits = np.asarray(t.output) @ unembed_matrix(compiled).astype(np.asarray(t.output).dtype)
    return TracrRun(decoded=_decode(compiled, np.asarray(out.unembedded_output)), logits=logits, residuals=residuals)


def run_converted(
    compiled: TracrProgram,
    model: HookedTransformer,
    seqs: Sequence[Sequence[Any]],
    fwd_hooks: Sequence[tuple[Any, Callable]] = (),
) -> TracrRun:
    """Runs the converted HookedTransformer (optionally with TransformerLens hooks) on a batch of sequences."""
    ids = torch.from_numpy(encode_inputs(compiled, seqs))
    names = ["blocks.0.hook_resid_pre"] + [
        f"blocks.{l}.hook_resid_{p}" for l in range(model.cfg.n_layers) for p in ("mid", "post")
    ]
    cache: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, *, hook: Any) -> None:
        cache[hook.name] = x.detach()

    with torch.no_grad():
        logits = model.run_with_hooks(ids, fwd_hooks=[*fwd_hooks, *[(n, keep) for n in names]])
    logits_np = logits.numpy()
    values = logits_np.argmax(-1) if compiled.categorical else logits_np[..., 0]
    residuals = np.stack([cache[n].numpy() for n in names])
    return TracrRun(decoded=_decode(compiled, values), logits=logits_np, residuals=residuals)


def outputs_differ(compiled: TracrProgram, a: list[Any], b: list[Any], atol: float = 1e-3) -> bool:
    """True if two decoded output sequences differ (numerical outputs: by more than `atol`)."""
    if compiled.categorical:
        return a != b
    return bool(np.any(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) > atol))


def head_ablation_changes(compiled: TracrProgram, model: HookedTransformer, max_len: int | None = None) -> torch.Tensor:
    """`[n_layers, n_heads]` count of inputs (all sequences up to max_len) whose decoded output changes when the
    head's `hook_z` is zeroed."""
    counts = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.long)
    for seqs in all_inputs(compiled, max_len).values():
        clean = run_converted(compiled, model, seqs).decoded
        for layer, head in itertools.product(range(model.cfg.n_layers), range(model.cfg.n_heads)):

            def zero(z: torch.Tensor, *, hook: Any, head: int = head) -> torch.Tensor:
                z[:, :, head] = 0.0
                return z

            ablated = run_converted(compiled, model, seqs, [(f"blocks.{layer}.attn.hook_z", zero)]).decoded
            counts[layer, head] += sum(outputs_differ(compiled, c, a) for c, a in zip(clean, ablated))
    return counts
