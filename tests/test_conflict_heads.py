"""Memory vs context heads (PH3): a hand-built conflict model whose memory and context heads are known, the
references, pruning both ways against random heads, determinism, refusals, and gemma-3-270m."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import assert_one_sentence
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import GPT2Config

from mechkit.backends.tl import TLSubject
from mechkit.batch import Batch
from mechkit.circuits.conflict_heads import conflict_heads, prune_conflict_heads, score_conflict_heads
from mechkit.circuits.examples import CircuitExamples
from mechkit.circuits.path_patching import path_patching
from mechkit.errors import MechkitError
from mechkit.models.tiny import byte_tokenizer
from mechkit.tasks.conflicts import ConflictFact, ConflictSet

SUBJECTS, OBJECTS = "abcd", "efgh"  # subject i's memorized object is OBJECTS[i]
HARD = 1e3
D = 16 + 3  # one-hot letters a-p | <bos> | subject flag | object flag
BOS, SUBJ, OBJ = 16, 17, 18


def conflict_toy(memory_scale: float, context_scale: float) -> TLSubject:
    """One attention-only layer, three heads, no norms. From the last token (the subject):
    L0H0 (memory) attends to the subject and writes `memory_scale` on its memorized object;
    L0H1 (context) attends to the object in the context (else <bos>, value 0) and copies it with `context_scale`;
    L0H2 writes nothing. So a conflict prompt has LD = memory_scale - context_scale exactly."""
    tok = byte_tokenizer()
    ids = [tok.convert_tokens_to_ids(c) for c in "abcdefghijklmnop"]
    cfg = HookedTransformerConfig(n_layers=1, d_model=D, n_ctx=8, d_head=4, n_heads=3, d_vocab=len(tok),
                                  attn_only=True, normalization_type=None, act_fn="relu", use_attn_scale=False,
                                  positional_embedding_type="standard", default_prepend_bos=False)
    model = HookedTransformer(cfg, move_to_device=False)
    params = dict(model.named_parameters())
    state = {n: torch.zeros_like(v) if n in params else v for n, v in model.state_dict().items()}
    for i, t in enumerate(ids):
        state["embed.W_E"][t, i] = 1.0
        state["unembed.W_U"][i, t] = 1.0
        state["embed.W_E"][t, SUBJ] = float(i < 4)
        state["embed.W_E"][t, OBJ] = float(4 <= i < 8)
    state["embed.W_E"][tok.bos_token_id, BOS] = 1.0
    p = "blocks.0.attn."
    for head, key_flag in ((0, SUBJ), (1, OBJ)):
        state[p + "W_Q"][head, SUBJ, 0] = HARD
        state[p + "W_K"][head, key_flag, 0] = 1.0
        state[p + "b_Q"][head, 3] = HARD / 2  # <bos> is the fallback
        state[p + "W_K"][head, BOS, 3] = 1.0
    state[p + "W_V"][0, :4, :4] = torch.eye(4)  # subject i -> its object 4 + i
    state[p + "W_O"][0, :4, 4:8] = memory_scale * torch.eye(4)
    state[p + "W_V"][1, 4:8, :4] = torch.eye(4)  # object j -> itself
    state[p + "W_O"][1, :4, 4:8] = context_scale * torch.eye(4)
    model.load_state_dict(state)
    config = GPT2Config(n_layer=1, n_head=3, n_embd=D, n_positions=8, vocab_size=len(tok))
    config.head_dim = 4
    return TLSubject(model, model_id="toy:conflict", config=config, tokenizer=tok, prepend_bos=False,
                     weights_sha256=None)


def toy_conflicts() -> ConflictSet:
    """Every (subject, counterfactual) pair: "<bos> s c s" vs aligned "<bos> s m s", and the query "<bos> s"."""
    tok = byte_tokenizer()
    tid, bos = tok.convert_tokens_to_ids, tok.bos_token_id
    facts, pos, neg, bare, mem, ctx = [], [], [], [], [], []
    for i, s in enumerate(SUBJECTS):
        for c in OBJECTS:
            if c == OBJECTS[i]:
                continue
            facts.append(ConflictFact(s, "toy", "{subject}", OBJECTS[i], c))
            pos.append([bos, tid(s), tid(c), tid(s)])
            neg.append([bos, tid(s), tid(OBJECTS[i]), tid(s)])
            bare.append([bos, tid(s)])
            mem.append(tid(OBJECTS[i]))
            ctx.append(tid(c))
    examples = CircuitExamples.from_token_ids("toy-conflict", pos, neg, mem, ctx)
    return ConflictSet(tuple(facts), examples, Batch.from_sequences(bare, 0), tuple((m,) for m in mem))


def test_the_memory_head_and_the_context_head_get_their_exact_scores():
    """Mean reference: each head's whole contribution to LD (+3 for the memory head, -5 for the context head, 0 for
    the silent one: the means put equal weight on every object). Aligned / no-context references see only the head
    whose output depends on the context: the memory head scores 0 there, which is why "mean" is the default."""
    toy, conflicts = conflict_toy(3.0, 5.0), toy_conflicts()
    mean = score_conflict_heads(toy, conflicts, verbose=False)
    torch.testing.assert_close(mean.scores, torch.tensor([[3.0, -5.0, 0.0]], dtype=torch.float64), atol=1e-4, rtol=0)
    aligned = score_conflict_heads(toy, conflicts, "aligned", verbose=False)
    torch.testing.assert_close(aligned.scores, torch.tensor([[0.0, -10.0, 0.0]], dtype=torch.float64), atol=1e-4,
                               rtol=0)
    bare = score_conflict_heads(toy, conflicts, "no_context", verbose=False)
    torch.testing.assert_close(bare.scores, torch.tensor([[0.0, -5.0, 0.0]], dtype=torch.float64), atol=1e-4,
                               rtol=0)


def test_aligned_reference_equals_path_patching_by_full_runs(tiny_tl):
    """The cached last-token runs are the direct path of `path_patching` (aligned negatives as the reference)."""
    from test_circuits_eap import random_task

    examples = random_task(seed=3)
    conflicts = ConflictSet((), examples, examples.positives, ())
    ours = score_conflict_heads(tiny_tl, conflicts, "aligned", batch_size=5, verbose=False).scores
    runs = path_patching(tiny_tl, examples, min_accuracy=0.0, verbose=False).scores.scores
    torch.testing.assert_close(ours, runs, atol=1e-4, rtol=0)
    assert runs.abs().max() > 0.05


@pytest.mark.parametrize("memory_scale,context_scale,pruned,flips_to", [(5.0, 3.0, "memory", "context"),
                                                                         (3.0, 5.0, "context", "memory")])
def test_pruning_one_kind_flips_the_choice_and_random_heads_do_not(memory_scale, context_scale, pruned, flips_to):
    toy = conflict_toy(memory_scale, context_scale)
    result = conflict_heads(toy, k=1, ks=(1,), modes=("zero",), n_random=2, conflicts=toy_conflicts(),
                            verbose=False)
    assert [h.label for h in result.memory_heads] == ["L0H0"]
    assert [h.label for h in result.context_heads] == ["L0H1"]
    rows = {(r["kind"], r["draw"]): r for r in result.records}
    other = "memory" if flips_to == "context" else "context"
    assert rows["none", 0][f"follows_{other}"] == 1.0
    assert rows[pruned, 0][f"follows_{flips_to}"] == 1.0
    assert rows["random", 0]["heads"] == "L0H2" and rows["random", 0][f"follows_{other}"] == 1.0
    assert rows["memory", 0]["knows"] == 0.0 and rows["context", 0]["knows"] == 1.0  # the fact lives in L0H0
    assert rows[pruned, 0]["mean_ld"] == pytest.approx(memory_scale if pruned == "context" else -context_scale,
                                                       abs=1e-4)


def test_mean_ablation_and_seeds_are_deterministic():
    toy, conflicts = conflict_toy(3.0, 5.0), toy_conflicts()
    scores = score_conflict_heads(toy, conflicts, verbose=False)
    a = prune_conflict_heads(toy, conflicts, scores, ks=(1, 2), modes=("zero", "mean"), n_random=3, seed=4,
                             verbose=False)
    b = prune_conflict_heads(toy, conflicts, scores, ks=(1, 2), modes=("zero", "mean"), n_random=3, seed=4,
                             verbose=False)
    assert a == b
    mean_memory = next(r for r in a if r["mode"] == "mean" and r["kind"] == "memory" and r["k"] == 1)
    assert mean_memory["mean_ld"] == pytest.approx(-5.0, abs=1e-4)  # the mean writes equal logits on e-h


def test_bad_input_is_refused_in_one_sentence(tiny_tl):
    toy = conflict_toy(3.0, 5.0)
    with pytest.raises(MechkitError) as err:
        conflict_heads(toy, k=4, conflicts=toy_conflicts(), verbose=False)
    assert_one_sentence(err, "between 1 and 3", "toy:conflict")
    with pytest.raises(MechkitError) as err:
        score_conflict_heads(toy, toy_conflicts(), reference="zero", verbose=False)
    assert_one_sentence(err, "reference 'zero' is not one of mean")
    with pytest.raises(MechkitError) as err:
        prune_conflict_heads(toy, toy_conflicts(), score_conflict_heads(toy, toy_conflicts(), verbose=False),
                             ks=(1,), modes=("resample",), verbose=False)
    assert_one_sentence(err, "modes 'resample'", "zero, mean")
    with pytest.raises(MechkitError) as err:  # a random byte model knows none of the built-in facts
        conflict_heads(tiny_tl, verbose=False)
    assert_one_sentence(err)


@pytest.mark.real
def test_pruning_gemma_memory_heads_raises_context_following_above_random_heads(gemma_nnsight):
    result = conflict_heads(gemma_nnsight, n=16, k=4, ks=(4,), modes=("zero",), n_random=3, verbose=False)
    rows = result.records
    memory = next(r for r in rows if r["kind"] == "memory")
    random = [r["follows_context"] for r in rows if r["kind"] == "random"]
    assert memory["follows_context"] > result.follows_context
    assert memory["follows_context"] > max(random)
    assert memory["mean_ld"] < result.clean_ld
