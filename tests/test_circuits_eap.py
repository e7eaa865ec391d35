"""Attribution patching and edge attribution patching: the toy's known circuit, finite differences on tiny float64
models (split q/k/v inputs give each edge its own perturbation), completeness, backends, batching, refusals."""

from __future__ import annotations

import math
import random

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import GPT2Config

from mechkit.attention import AttentionRule
from mechkit.backends.tl import TLSubject
from mechkit.circuits.eap import EMBED, LOGITS, attribution_patching, edge_attribution_patching, node_head
from mechkit.circuits.examples import CircuitExamples
from mechkit.circuits.metrics import roc_auc
from mechkit.circuits.patching import head_patching
from mechkit.errors import MechkitError
from mechkit.models.tiny import byte_tokenizer

from circuit_toys import TRUE_HEADS, induction_examples, induction_subject, toy, toy_examples  # noqa: F401

EPS = 1e-5


@pytest.fixture(scope="module")
def toy_rule():
    """The toy (built with use_attn_scale=False: TLSubject's rule then has scale 1, as the model runs)."""
    subject = induction_subject()
    assert [rule.scale for rule in subject._rules] == [1.0] * subject.n_layers
    return subject


def tl_model(seed: int = 0, **cfg) -> TLSubject:
    """A 3-layer float64 TransformerLens model (rotary) with weights from a local generator."""
    cfg = {"n_layers": 3, "d_model": 16, "n_ctx": 16, "d_head": 4, "n_heads": 4, "d_mlp": 32,
           "d_vocab": len(byte_tokenizer()), "act_fn": "gelu", "normalization_type": "LN",
           "positional_embedding_type": "rotary", "rotary_dim": 4, "default_prepend_bos": False,
           "dtype": torch.float64} | cfg
    model = HookedTransformer(HookedTransformerConfig(**cfg), move_to_device=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(1 + 0.1 * noise if name.endswith(".w") else 0.1 * noise if ".b" in name else 0.4 * noise)
    config = GPT2Config(n_layer=3, n_head=4, n_embd=16, n_positions=16, vocab_size=cfg["d_vocab"])
    config.head_dim = 4
    config.num_key_value_heads = cfg.get("n_key_value_heads") or 4
    return TLSubject(model, model_id="test:tl", config=config, tokenizer=byte_tokenizer(), prepend_bos=False,
                     weights_sha256=None)


def random_task(n: int = 6, seed: int = 0, mixed: bool = True) -> CircuitExamples:
    """Random pairs of lengths 7-9 (left padding; 7 unless `mixed`); each negative changes two of its tokens."""
    rng = random.Random(seed)
    pos, neg, answers, wrongs = [], [], [], []
    for i in range(n):
        p = [1] + [rng.randrange(3, 200) for _ in range(6 + (i % 3 if mixed else 0))]
        q = list(p)
        q[2], q[-1] = rng.randrange(3, 200), rng.randrange(3, 200)
        pos.append(p)
        neg.append(q)
        answers.append(rng.randrange(3, 200))
        wrongs.append(rng.randrange(200, 250))
    return CircuitExamples.from_token_ids("random", pos, neg, answers, wrongs)


def mean_metric(subject, examples, hooks) -> float:
    """Mean logit difference in the model's dtype (`logit_diff` rounds to float32, too coarse for derivatives)."""
    logits = subject.run_with_hooks(examples.positives, hooks, last_only=True)[:, -1]
    rows = torch.arange(len(logits))
    return (logits[rows, examples.answer_ids] - logits[rows, examples.wrong_ids]).mean().item()


def central_difference(subject, examples, hook_name, perturbation) -> float:
    """d metric / d t of the positives' run with `perturbation * t` added at `hook_name`, at t = 0."""
    def shift(t):
        return [(hook_name, lambda x, *, hook: x + t * perturbation.to(x))]

    return (mean_metric(subject, examples, shift(EPS)) - mean_metric(subject, examples, shift(-EPS))) / (2 * EPS)


def writes(subject, examples) -> dict[str, torch.Tensor]:
    """Each sender's patch in the residual stream (negatives - positives), padding zeroed: embed, and z W_O."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_z" for l in range(subject.n_layers)]
    _, pos = subject.run_with_cache(examples.positives, names)
    _, neg = subject.run_with_cache(examples.negatives, names)
    mask = examples.positives.attention_mask[:, :, None].double()
    out = {EMBED: (neg[names[0]] - pos[names[0]]) * mask}
    for layer in range(subject.n_layers):
        dz = neg[names[layer + 1]] - pos[names[layer + 1]]
        for head in range(subject.n_heads):
            out[f"L{layer}H{head}"] = dz[:, :, head] @ subject.W_O(layer)[head] * mask
    return out


def test_plain_attribution_is_exact_where_linear_and_blind_to_saturated_attention(toy, toy_examples):  # noqa: F811
    """In the attention-only toy without norms the metric is linear in each layer-1 head's z, so AtP equals
    exhaustive patching there; L0H1 acts through L1H2's hard (saturated) pattern, whose gradient is 0."""
    atp = attribution_patching(toy, toy_examples, verbose=False).scores
    exact = head_patching(toy, toy_examples, verbose=False).scores
    torch.testing.assert_close(atp.scores[1], exact.scores[1], atol=1e-4, rtol=0)
    assert atp["L1H2"] == pytest.approx(1.0, abs=0.02)
    assert exact["L0H1"] == pytest.approx(1.0, abs=0.02) and abs(atp["L0H1"]) < 1e-6


def test_eap_with_the_qk_fix_recovers_the_toy_circuit(toy_rule, toy_examples):  # noqa: F811
    """Measured: nodes L0H1 1.0043, L1H2 1.0043, the rest |.| < 0.014; edges L0H1->L1H2.q and L1H2->logits 1.0043,
    the next one 0.053 (embed->L0H0.q)."""
    result = edge_attribution_patching(toy_rule, toy_examples, verbose=False)
    nodes = result.nodes
    assert {h.label for h, _ in nodes.top(2)} == set(TRUE_HEADS)
    for label in TRUE_HEADS:
        assert nodes[label] == pytest.approx(1.0, abs=0.02)
    assert roc_auc(nodes, TRUE_HEADS) == 1.0
    top = result.edges(3)
    assert {e.label for e in top[:2]} == {"L0H1->L1H2.q", "L1H2->logits"}
    assert all(e.score == pytest.approx(1.0, abs=0.02) for e in top[:2]) and abs(top[2].score) < 0.1
    assert result.direct["L1H2"] == pytest.approx(1.0, abs=0.02) and result.direct["L0H1"] == 0.0
    assert result.edge("L0H1", "L1H2.q") == top[0].score or result.edge("L0H1", "L1H2.q") == top[1].score
    assert {h.label for h, _ in result.edge_heads.top(2)} == set(TRUE_HEADS)
    assert node_head("L1H2.q").label == "L1H2" and node_head(LOGITS) is None
    plain = edge_attribution_patching(toy_rule, toy_examples, qk_fix=False, verbose=False)
    assert abs(plain.edge("L0H1", "L1H2.q")) < 1e-6 and abs(plain.nodes["L0H1"]) < 1e-6


def test_every_edge_equals_its_finite_difference():
    """Plain EAP is the derivative of the metric along each edge alone: sender u's patch added, times t, to the
    split q / k / v input of one receiver head (TransformerLens' use_split_qkv_input), or to the final residual;
    float64, LayerNorm, rotary, MLPs."""
    subject = tl_model(use_split_qkv_input=True)
    examples = random_task()
    result = edge_attribution_patching(subject, examples, qk_fix=False, min_accuracy=0.0, verbose=False)
    gap = result.clean - result.corrupt
    patch = writes(subject, examples)
    worst, largest = 0.0, 0.0
    for s, sender in enumerate(result.senders):
        for r, receiver in enumerate(result.receivers):
            score = result.edge_scores[s, r].item()
            head, sender_head = node_head(receiver), node_head(sender)
            if receiver == LOGITS:
                hook, perturbation = "blocks.2.hook_resid_post", patch[sender]
            elif sender_head is not None and sender_head.layer >= head.layer:
                assert math.isnan(score)  # no such edge
                continue
            else:
                hook = f"blocks.{head.layer}.hook_{receiver[-1]}_input"
                perturbation = torch.zeros(*patch[sender].shape[:2], 4, 16, dtype=torch.float64)
                perturbation[:, :, head.head] = patch[sender]
            expected = central_difference(subject, examples, hook, perturbation)
            worst = max(worst, abs(-score * gap - expected))
            largest = max(largest, abs(expected))
    assert largest > 0.1
    assert worst < 1e-6 * largest


def test_node_attribution_equals_its_finite_difference():
    subject = tl_model(seed=1)
    examples = random_task(seed=1)
    result = attribution_patching(subject, examples, min_accuracy=0.0, verbose=False)
    _, pos = subject.run_with_cache(examples.positives, "blocks.1.attn.hook_z")
    _, neg = subject.run_with_cache(examples.negatives, "blocks.1.attn.hook_z")
    gap = result.clean - result.corrupt
    for head in range(4):
        dz = torch.zeros_like(pos["blocks.1.attn.hook_z"])
        dz[:, :, head] = (neg["blocks.1.attn.hook_z"] - pos["blocks.1.attn.hook_z"])[:, :, head]
        expected = central_difference(subject, examples, "blocks.1.attn.hook_z", dz)
        assert -result.scores[(1, head)] * gap == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("qk_fix", [False, True])
def test_edges_out_of_a_head_sum_to_its_node_score(qk_fix):
    """Attention-only (grouped-query, RMSNorm, rotary): every reader of the residual stream is a receiver, so a
    head's edges add up to its node score (k / v edges are per query head although k / v are shared)."""
    subject = tl_model(seed=2, attn_only=True, n_key_value_heads=2, normalization_type="RMS")
    result = edge_attribution_patching(subject, random_task(seed=2), qk_fix=qk_fix, min_accuracy=0.0, verbose=False)
    sums = result.edge_scores[1:].nan_to_num(0.0).sum(1).reshape(3, 4)
    torch.testing.assert_close(sums, result.nodes.scores, atol=1e-9, rtol=0)
    assert result.nodes.scores.abs().max() > 0.05


def test_logit_edges_go_through_the_post_attention_norm():
    """With a norm after attention (Gemma's sandwich norms), a head's write is linearized through it: its logit edge
    is the derivative with every later attention and MLP output frozen (float64; HF's eager attention takes its
    softmax in float32, too coarse for this, so TransformerLens builds the model)."""
    subject = tl_model(seed=3, normalization_type="RMS", use_normalization_before_and_after=True)
    examples = random_task(seed=3)
    result = edge_attribution_patching(subject, examples, min_accuracy=0.0, verbose=False)
    gap = result.clean - result.corrupt
    names = [f"blocks.{l}.hook_{kind}_out" for l in range(3) for kind in ("attn", "mlp")]
    names += [f"blocks.{l}.attn.hook_z" for l in range(3)]
    _, pos = subject.run_with_cache(examples.positives, names)
    _, neg = subject.run_with_cache(examples.negatives, [n for n in names if n.endswith("z")])
    mask = examples.positives.attention_mask[:, :, None].double()
    for layer, head in [(0, 1), (1, 2), (2, 0), (2, 3)]:
        frozen = [(f"blocks.{l}.hook_attn_out", lambda x, *, hook: pos[hook.name]) for l in range(layer + 1, 3)]
        frozen += [(f"blocks.{l}.hook_mlp_out", lambda x, *, hook: pos[hook.name]) for l in range(layer, 3)]
        z = f"blocks.{layer}.attn.hook_z"
        dz = torch.zeros_like(pos[z])
        dz[:, :, head] = (neg[z] - pos[z])[:, :, head] * mask

        def metric(t, z=z, dz=dz, frozen=frozen):
            return mean_metric(subject, examples, [(z, lambda x, *, hook: x + t * dz)] + frozen)

        expected = (metric(EPS) - metric(-EPS)) / (2 * EPS)
        assert -result.edge(f"L{layer}H{head}", LOGITS) * gap == pytest.approx(expected, rel=1e-6, abs=1e-9)
    summed = torch.einsum("bphd,hdm->bpm", pos["blocks.1.attn.hook_z"], subject.W_O(1))
    assert (pos["blocks.1.hook_attn_out"] - summed).abs().max() > 0.1  # the heads' sum is normalized before it is added


def test_backends_agree(tiny_tl, tiny_nnsight):
    examples = random_task(seed=4)
    a = edge_attribution_patching(tiny_tl, examples, min_accuracy=0.0, verbose=False)
    b = edge_attribution_patching(tiny_nnsight, examples, min_accuracy=0.0, verbose=False)
    torch.testing.assert_close(a.edge_scores, b.edge_scores, atol=1e-4, rtol=0, equal_nan=True)
    torch.testing.assert_close(a.nodes.scores, b.nodes.scores, atol=1e-4, rtol=0)


def test_batched_equals_unbatched_and_runs_are_deterministic(toy_rule):
    examples = induction_examples(n=10)
    one = edge_attribution_patching(toy_rule, examples, batch_size=32, verbose=False)
    split = edge_attribution_patching(toy_rule, examples, batch_size=3, verbose=False)
    again = edge_attribution_patching(toy_rule, examples, batch_size=32, verbose=False)
    torch.testing.assert_close(one.edge_scores, split.edge_scores, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(one.nodes.scores, split.nodes.scores, atol=1e-5, rtol=0)
    assert torch.equal(one.edge_scores.nan_to_num(7.0), again.edge_scores.nan_to_num(7.0))
    assert len(one.edges()) == 25 + 4 * 13 + 4  # out of the embeddings, layer-0 heads, layer-1 heads
    assert one.edges()[0] == one.edges(1)[0]


def test_a_wrong_attention_rule_is_refused(toy_examples):  # noqa: F811
    """A Subject whose rule scales q.k by 1/sqrt(40), not as the model does: edges would be wrong."""
    wrong = induction_subject()
    wrong._rules = [AttentionRule(scale=40**-0.5)] * wrong.n_layers
    with pytest.raises(MechkitError, match=r"layer 0 of toy:induction does not compute z = softmax\(q k\^T\) v"):
        edge_attribution_patching(wrong, toy_examples, verbose=False)


def test_negatives_that_change_nothing_are_refused(toy_rule, toy_examples):  # noqa: F811
    same = CircuitExamples("same", toy_examples.positives, toy_examples.positives, toy_examples.answer_ids,
                           toy_examples.wrong_ids)
    with pytest.raises(MechkitError, match="negatives leave the mean logit difference unchanged"):
        attribution_patching(toy_rule, same, verbose=False)
    with pytest.raises(MechkitError, match="no edge L1H2->L0H1.q"):
        edge_attribution_patching(toy_rule, toy_examples, verbose=False).edge("L1H2", "L0H1.q")
