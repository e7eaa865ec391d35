"""Attribution patching at head level: node-level AtP and edge attribution patching (EAP, Syed, Rager & Conmy 2023).

Both are first-order estimates of activation patching (the paired negatives' activations patched into the
positives' run, `patching.head_patching`) from one forward + backward pass on the positives and one forward pass on
the negatives, per batch. Scores use head_patching's normalization, (clean - patched) / (clean - corrupt) of the mean
logit difference: positive = the component carries the effect, 1 = all of it.

- Node AtP of head u: (z_u^neg - z_u^pos) . dm/dz_u, summed over positions (every position is patched).
- Edges. Senders: the embeddings (`resid_pre` of layer 0) and every head, as its write into the residual stream,
  Delta a_u = J (z_u^neg - z_u^pos), the head's z through W_O (and a post-attention norm, linearized, where the model
  has one). Receivers: each head's own q, k and v inputs, and the logits. score(u -> v.c) = Delta a_u . dm/dx_{v,c},
  where x_{v,c} is the copy of the residual stream feeding only input c of head v (the split-input gradient of
  standard EAP, not the gradient at resid_pre, which also holds every other reader of the stream). It is computed
  exactly through the attention pattern: with dA = dm/dA_v = dm/dz_v v^T,
  q and k edges are dA . (dA_v/dq_v) J_q Delta a_u (resp. k), v edges are (A_v^T dm/dz_v) . J_v Delta a_u, where
  J_q, J_k, J_v linearize the pre-attention norm, projection, query/key norms and rotary (double backward). In
  grouped-query models k and v edges are still per query head (through that head's own pattern).
  Logit edges: Delta a_u . dm/d(final residual).
- qk_fix (AtP*, Kramar et al. 2024): q / k edges take the exact pattern change softmax(q + Delta q, k) - A instead of
  its linearization, which is blind where attention is saturated (a hard pattern has zero softmax gradient). Node
  scores then swap the linear q / k terms of each head for the fixed ones.

Models whose heads compute z = softmax(q k^T) v (every backend's transformer layers) support edges; node AtP only
needs hook_z and works everywhere. MLPs are not nodes: paths through them count in node scores, not in edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.attention import attention_rows_from_qk
from mechkit.circuits.examples import CircuitExamples, check_solvable, logit_diff
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, all_heads
from mechkit.scores import HeadScores

INPUTS = ("q", "k", "v")
EMBED = "embed"
LOGITS = "logits"


def _qk(subject) -> tuple[str, str]:
    """The hooks holding the q and k the pattern is computed from: post-rotary, or plain q / k without rotary."""
    return ("rot_q", "rot_k") if _name(0, "rot_q") in subject.hook_names else ("q", "k")


def _name(layer: int, hook: str) -> str:
    return f"blocks.{layer}.attn.hook_{hook}" if hook in ("z", "q", "k", "v", "rot_q", "rot_k") else f"blocks.{layer}.hook_{hook}"


@dataclass(frozen=True)
class Edge:
    """One edge: sender ("embed" or "L0H1"), receiver ("L1H2.q" / ".k" / ".v", or "logits"), normalized score."""

    sender: str
    receiver: str
    score: float

    @property
    def label(self) -> str:
        return f"{self.sender}->{self.receiver}"


@dataclass
class AttributionResult:
    """Node-level attribution patching: `scores` per head (normalized as head_patching); clean / corrupt: mean
    metric on positives / negatives; accuracy: the model's on the positives."""

    scores: HeadScores
    clean: float
    corrupt: float
    accuracy: float


@dataclass
class EAPResult:
    """Edge attribution patching.

    edge_scores `[sender, receiver]`: normalized edge scores, NaN where no edge exists (receiver not downstream);
    senders: "embed", then heads layer-major; receivers: "L{l}H{h}.{q|k|v}" layer-major, then "logits".
    nodes: node AtP (with the QK fix when `qk_fix`); direct: each head's edge to the logits; edge_heads: sum of
    |edge score| over the edges touching each head (in or out).
    """

    edge_scores: Float[Tensor, "sender receiver"]
    senders: list[str]
    receivers: list[str]
    nodes: HeadScores
    direct: HeadScores
    edge_heads: HeadScores
    clean: float
    corrupt: float
    accuracy: float
    qk_fix: bool

    def edges(self, k: int | None = None) -> list[Edge]:
        """The `k` (default all) edges with the largest |score|, best first; ties keep sender-major order."""
        flat = self.edge_scores.flatten().tolist()
        n = len(self.receivers)
        found = [(i, s) for i, s in enumerate(flat) if not math.isnan(s)]
        found.sort(key=lambda pair: (-abs(pair[1]), pair[0]))
        return [Edge(self.senders[i // n], self.receivers[i % n], s) for i, s in found[:k]]

    def edge(self, sender: str, receiver: str) -> float:
        """Score of one edge, e.g. `edge("L0H1", "L1H2.q")`."""
        if sender not in self.senders or receiver not in self.receivers:
            raise MechkitError(f"no edge {sender}->{receiver}; senders look like 'embed' or 'L0H1', receivers like "
                               "'L1H2.q' or 'logits'")
        score = self.edge_scores[self.senders.index(sender), self.receivers.index(receiver)].item()
        if math.isnan(score):
            raise MechkitError(f"no edge {sender}->{receiver}: the receiver is not downstream of the sender")
        return score


def _linearization(outputs: list[Tensor], delta: Tensor) -> Callable[[Tensor], list[Tensor]]:
    """tangent -> [d output / d delta . tangent for each output]: the Jacobian-vector product at the clean run,
    by double backward (the vector-Jacobian product is linear in its cotangent; differentiate it again)."""
    dummies = [torch.zeros_like(o, requires_grad=True) for o in outputs]
    (vjp,) = torch.autograd.grad(outputs, delta, grad_outputs=dummies, create_graph=True, allow_unused=True)

    def apply(tangent: Tensor) -> list[Tensor]:
        if vjp is None or not vjp.requires_grad:
            return [torch.zeros_like(o) for o in outputs]
        got = torch.autograd.grad(vjp, dummies, grad_outputs=tangent.to(vjp), retain_graph=True, allow_unused=True)
        return [torch.zeros_like(o) if g is None else g.detach() for o, g in zip(outputs, got)]

    return apply


@dataclass
class _Pass:
    """What one batch leaves: summed (not averaged) raw estimates of patched - clean, in logit-difference units."""

    metric_pos: Tensor
    metric_neg: Tensor
    nodes: Tensor  # [layer, head] linear AtP
    node_fix: Tensor  # [layer, head] QK-fix correction (0 without edges)
    edges: Tensor | None  # [sender, receiver]


def _forward_with_grads(subject, chunk: CircuitExamples, edges: bool):
    """Positives' run with zero-valued leaves added at hook_z (and resid_pre), whose gradients are dm/dz."""
    L = subject.n_layers
    deltas: dict[str, Tensor] = {}
    kept: dict[str, Tensor] = {}

    def add(x, *, hook):
        delta = torch.zeros_like(x, requires_grad=True)
        deltas[hook.name], kept[hook.name] = delta, x.detach()
        return x + delta

    def keep(x, *, hook):
        kept[hook.name] = x

    hooks = [(_name(layer, "z"), add) for layer in range(L)] + [(_name(L - 1, "resid_post"), add)]
    if edges:
        hooks += [(_name(layer, "resid_pre"), add) for layer in range(L)]
        hooks += [(_name(layer, hook), keep) for layer in range(L) for hook in (*_qk(subject), "v", "attn_out")]
    batch = chunk.positives
    # Subject.run_with_hooks runs under no_grad; the backend primitive runs the same hooked forward with gradients.
    with torch.enable_grad():
        logits = subject._run(batch, subject._hooks(batch, hooks, ()), True)
        metric = logit_diff(logits[:, -1], chunk.answer_ids, chunk.wrong_ids)
        wrt = [deltas[_name(layer, "z")] for layer in range(L)] + [deltas[_name(L - 1, "resid_post")]]
        grads = torch.autograd.grad(metric.sum(), wrt, retain_graph=edges, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g.detach() for w, g in zip(wrt, grads)]
    return metric.detach().cpu(), deltas, kept, grads[:L], grads[L]


def _pass(subject, chunk: CircuitExamples, edges: bool, qk_fix: bool, tick: Callable[[], object]) -> _Pass:
    L, H = subject.n_layers, subject.n_heads
    metric_pos, deltas, kept, grad_z, grad_final = _forward_with_grads(subject, chunk, edges)
    names = [_name(layer, "z") for layer in range(L)] + [_name(0, "resid_pre")]
    logits_neg, neg = subject.run_with_cache(chunk.negatives, names_filter=names, last_only=True)
    metric_neg = logit_diff(logits_neg[:, -1], chunk.answer_ids, chunk.wrong_ids).cpu()
    mask = chunk.positives.attention_mask.to(grad_final.device)[:, :, None, None].double()
    dz = [(neg[_name(layer, "z")].to(grad_z[layer]) - kept[_name(layer, "z")]) * mask.to(grad_z[layer])
          for layer in range(L)]  # padding is identical in both runs
    nodes = torch.stack([(dz[layer].double() * grad_z[layer].double()).sum((0, 1, 3)) for layer in range(L)])
    node_fix = torch.zeros(L, H, dtype=torch.float64)
    if not edges:
        tick()
        return _Pass(metric_pos, metric_neg, nodes.cpu(), node_fix, None)
    embed = (neg[_name(0, "resid_pre")].to(grad_final) - kept[_name(0, "resid_pre")]) * mask[..., 0].to(grad_final)
    writes = [embed]
    for layer in range(L):  # each head's write into the residual stream, linearized through any post-norm
        write = _linearization([kept[_name(layer, "attn_out")]], deltas[_name(layer, "z")])
        for head in range(H):
            tangent = torch.zeros_like(dz[layer])
            tangent[:, :, head] = dz[layer][:, :, head]
            writes.append(write(tangent)[0])
    table = torch.full((1 + L * H, 3 * L * H + 1), float("nan"), dtype=torch.float64)
    table[:, -1] = torch.stack([(w.double() * grad_final.double()).sum() for w in writes]).cpu()
    for layer in range(L):
        n_senders = 1 + layer * H
        lin, fix = _receiver_layer(subject, chunk, layer, kept, deltas, grad_z[layer], writes[:n_senders], qk_fix)
        table[:n_senders, 3 * layer * H:3 * (layer + 1) * H] = (fix if qk_fix else lin).flatten(1)
        if qk_fix:  # a head's node score: its linear q / k terms replaced by the fixed ones
            correction = (fix - lin)[1:, :, :2].sum((1, 2)).reshape(layer, H)
            node_fix[:layer] += correction
        tick()
    return _Pass(metric_pos, metric_neg, nodes.cpu(), node_fix, table)


def _receiver_layer(subject, chunk, layer, kept, deltas, grad_z, writes, qk_fix) -> tuple[Tensor, Tensor]:
    """Raw edge scores [sender, receiver head, input (q, k, v)] into `layer`: linear, and with the QK fix."""
    H = subject.n_heads
    live = [kept[_name(layer, hook)] for hook in (*_qk(subject), "v")]  # still in the graph
    q, k, v = (t.detach() for t in live)
    group = H // k.shape[2]
    width = q.shape[1]
    positions = torch.arange(width)
    key_mask = chunk.positives.attention_mask.bool()
    rule = subject.attention_rule(layer)

    def rows(q: Tensor, k: Tensor) -> Tensor:  # [batch, head, query, key]
        return attention_rows_from_qk(q, k, positions, key_mask, rule)

    A = rows(q, k)
    dtype = A.dtype
    v_heads = v.to(dtype).repeat_interleave(group, dim=2)
    _check_softmax_attention(subject, layer, A, v_heads, kept[_name(layer, "z")], key_mask)
    gz = grad_z.to(dtype)
    dA = torch.einsum("bihd,bjhd->bhij", gz, v_heads)  # dm/dA
    qq = q.to(dtype).clone().requires_grad_(True)
    kk = k.to(dtype).repeat_interleave(group, dim=2).requires_grad_(True)  # one key copy per query head
    with torch.enable_grad():
        grad_q, grad_k = torch.autograd.grad((rows(qq, kk) * dA).sum(), [qq, kk])
    grad_v = torch.einsum("bhij,bihd->bjhd", A, gz)
    move = _linearization(live, deltas[_name(layer, "resid_pre")])
    lin = torch.zeros(len(writes), H, 3, dtype=torch.float64)
    fix = lin.clone()
    for s, write in enumerate(writes):
        d_q, d_k, d_v = (t.to(dtype) for t in move(write))
        lin[s, :, 0] = (d_q * grad_q).sum((0, 1, 3)).double().cpu()
        lin[s, :, 1] = (d_k.repeat_interleave(group, dim=2) * grad_k).sum((0, 1, 3)).double().cpu()
        lin[s, :, 2] = (d_v.repeat_interleave(group, dim=2) * grad_v).sum((0, 1, 3)).double().cpu()
        if qk_fix:
            fix[s, :, 0] = ((rows(q + d_q, k) - A) * dA).sum((0, 2, 3)).double().cpu()
            fix[s, :, 1] = ((rows(q, k + d_k) - A) * dA).sum((0, 2, 3)).double().cpu()
            fix[s, :, 2] = lin[s, :, 2]
    return lin, fix


def _check_softmax_attention(subject, layer: int, A: Tensor, v_heads: Tensor, z: Tensor, key_mask: Tensor) -> None:
    """Edges read dm/dA from dm/dz, which needs z = A v: check it on the real query positions."""
    predicted = torch.einsum("bhij,bjhd->bihd", A, v_heads)
    real = key_mask.to(z.device)
    error = (predicted - z.to(predicted))[real].abs().max().item()
    scale = max(z[real].abs().max().item(), 1e-6)
    tolerance = 1e-3 if z.dtype in (torch.float32, torch.float64) else 3e-2
    if error > tolerance * scale:
        raise MechkitError(
            f"layer {layer} of {subject.model_id} does not compute z = softmax(q k^T) v with its attention rule "
            f"{subject.attention_rule(layer)} (max error {error:.3g}), so edges cannot be attributed through its "
            "pattern; use attribution_patching for node scores"
        )


def _run(subject, examples, edges, qk_fix, batch_size, min_accuracy, criterion, on_unsolvable, verbose):
    accuracy = check_solvable(subject, examples, min_accuracy, criterion, on_unsolvable, batch_size)
    chunks = list(examples.chunks(batch_size))
    bar = tqdm(total=len(chunks) * (subject.n_layers if edges else 1), desc="attribution patching",
               disable=not verbose)
    passes = [_pass(subject, chunk, edges, qk_fix, bar.update) for chunk in chunks]
    bar.close()
    clean = torch.cat([p.metric_pos for p in passes]).double().mean().item()
    corrupt = torch.cat([p.metric_neg for p in passes]).double().mean().item()
    if not abs(clean - corrupt) > 1e-6 * max(1.0, abs(clean)):
        raise MechkitError(
            f"task {examples.name!r}: the negatives leave the mean logit difference unchanged ({clean:.4g}), so "
            "patching has no effect to attribute; make each negative an edit that breaks the task"
        )
    scale = -1.0 / (len(examples) * (clean - corrupt))  # raw sums of (patched - clean) -> normalized effect
    nodes = sum(p.nodes for p in passes) * scale
    fixed = (sum(p.nodes + p.node_fix for p in passes) * scale) if edges else None
    table = sum(p.edges for p in passes) * scale if edges else None
    return accuracy, clean, corrupt, nodes, fixed, table


def _config(examples, batch_size, min_accuracy, criterion, **extra) -> dict:
    return {"task": examples.name, "batch_size": batch_size, "min_accuracy": min_accuracy, "criterion": criterion,
            **extra}


def attribution_patching(
    subject,
    examples: CircuitExamples,
    batch_size: int = 32,
    min_accuracy: float = 0.5,
    criterion: str = "argmax",
    on_unsolvable: str = "raise",
    verbose: bool = True,
) -> AttributionResult:
    """Node-level attribution patching (AtP): the linear estimate of `head_patching`'s normalized effect of each
    head, from one forward + backward on the positives and one forward on the negatives per batch."""
    accuracy, clean, corrupt, nodes, _, _ = _run(subject, examples, False, False, batch_size, min_accuracy,
                                                 criterion, on_unsolvable, verbose)
    config = _config(examples, batch_size, min_accuracy, criterion)
    scores = HeadScores(nodes, metric="attribution_patching", model=subject.model_id, n_items=len(examples),
                        config=config)
    return AttributionResult(scores, clean, corrupt, accuracy)


def edge_attribution_patching(
    subject,
    examples: CircuitExamples,
    qk_fix: bool = True,
    batch_size: int = 32,
    min_accuracy: float = 0.5,
    criterion: str = "argmax",
    on_unsolvable: str = "raise",
    verbose: bool = True,
) -> EAPResult:
    """Edge attribution patching between the embeddings, heads (q / k / v inputs) and the logits; see the module
    docstring for the estimate. `qk_fix=False` is plain EAP (linear through softmax); True fixes saturation."""
    accuracy, clean, corrupt, nodes, fixed, table = _run(subject, examples, True, qk_fix, batch_size, min_accuracy,
                                                         criterion, on_unsolvable, verbose)
    L, H = subject.n_layers, subject.n_heads
    heads = all_heads(L, H)
    senders = [EMBED] + [h.label for h in heads]
    receivers = [f"{h.label}.{c}" for h in heads for c in INPUTS] + [LOGITS]
    magnitude = table.abs().nan_to_num(0.0)
    touching = magnitude[1:].sum(1) + magnitude[:, :-1].reshape(-1, L * H, 3).sum((0, 2))
    config = _config(examples, batch_size, min_accuracy, criterion, qk_fix=qk_fix)

    def scores(values: Tensor, metric: str) -> HeadScores:
        return HeadScores(values.reshape(L, H), metric=metric, model=subject.model_id, n_items=len(examples),
                          config=config)

    return EAPResult(
        table, senders, receivers,
        scores(fixed if qk_fix else nodes, "attribution_patching_qk" if qk_fix else "attribution_patching"),
        scores(table[1:, -1], "eap_direct"), scores(touching, "eap_edge_sum"), clean, corrupt, accuracy, qk_fix,
    )


def node_head(node: str) -> HeadId | None:
    """The head of a sender / receiver name ("L1H2.q" -> L1H2), None for "embed" and "logits"."""
    if node in (EMBED, LOGITS):
        return None
    layer, head = node.split(".")[0][1:].split("H")
    return HeadId(int(layer), int(head))
