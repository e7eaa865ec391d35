"""Circuit examples: construction and validation, the logit-difference metric, the solvability check."""

from __future__ import annotations

import pytest
import torch

from mechkit.circuits.examples import CircuitExamples, check_solvable, last_logits, logit_diff, task_accuracy
from mechkit.circuits.patching import head_patching
from mechkit.circuits.sae_discovery import SAEDiscoveryConfig, discover_circuit_sae
from mechkit.errors import MechkitError

from circuit_toys import induction_examples, letter_ids, toy, toy_examples  # noqa: F401


def test_from_token_ids_pads_pairs_alike():
    ex = CircuitExamples.from_token_ids("t", [[1, 5, 6], [1, 7]], [[1, 5, 9], [1, 8]], [6, 7], [9, 8], pad_id=0)
    assert ex.positives.tokens.tolist() == [[1, 5, 6], [0, 1, 7]]
    assert torch.equal(ex.positives.attention_mask, ex.negatives.attention_mask)
    sub = ex.select([1])
    assert sub.positives.tokens.tolist() == [[1, 7]] and sub.answer_ids.tolist() == [7]
    assert [len(c) for c in ex.chunks(1)] == [1, 1]


@pytest.mark.parametrize("pos, neg, answers, wrongs, match", [
    ([[1, 2, 3]], [[1, 2]], [3], [4], "positive 0 has 3 tokens but its negative has 2"),
    ([[1, 2]], [[1, 2], [1, 3]], [3], [4], "1 positives, 2 negatives"),
    ([[1, 2]], [[1, 3]], [3], [3], "same answer and wrong token"),
    ([], [], [], [], "at least one pair"),
])
def test_bad_example_sets_are_refused(pos, neg, answers, wrongs, match):
    with pytest.raises(MechkitError, match=match):
        CircuitExamples.from_token_ids("t", pos, neg, answers, wrongs)


def test_logit_diff_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0], [5.0, 1.0, 3.0]])
    assert logit_diff(logits, torch.tensor([1, 0]), torch.tensor([2, 2])).tolist() == [3.0, 2.0]


def test_from_texts_uses_the_subject_tokenizer(tiny_tl):
    ex = CircuitExamples.from_texts(tiny_tl, "t", ["ab", "abc"], ["xb", "xbc"], ["a", "d"], ["z", "z"])
    bos = tiny_tl.bos_prefix
    assert ex.positives.lengths.tolist() == [len(bos) + 2, len(bos) + 3]
    with pytest.raises(MechkitError, match="use single-token answers"):
        CircuitExamples.from_texts(tiny_tl, "t", ["ab"], ["xb"], ["abc"], ["z"])


def test_the_toy_solves_its_positives(toy, toy_examples):  # noqa: F811
    assert check_solvable(toy, toy_examples, min_accuracy=1.0) == 1.0
    assert task_accuracy(toy, toy_examples, "beats_wrong") == 1.0


def _half_unsolvable(examples: CircuitExamples) -> CircuitExamples:
    """Every second answer replaced by the (never predicted) wrong token's neighbour in the alphabet."""
    answers = examples.answer_ids.clone()
    ids = letter_ids()
    for i in range(0, len(answers), 2):
        answers[i] = next(t for t in ids if t not in (answers[i], examples.wrong_ids[i]))
    return CircuitExamples(examples.name, examples.positives, examples.negatives, answers, examples.wrong_ids)


def test_unsolvable_positives_raise_with_the_accuracy(toy, toy_examples):  # noqa: F811
    bad = _half_unsolvable(toy_examples)
    assert task_accuracy(toy, bad) == 0.5
    with pytest.raises(MechkitError, match=r"solves only 50\.0% of the 24 positives"):
        check_solvable(toy, bad, min_accuracy=0.8)
    with pytest.warns(UserWarning, match=r"solves only 50\.0%"):
        assert check_solvable(toy, bad, min_accuracy=0.8, on_fail="warn") == 0.5
    logits = torch.cat([last_logits(toy, chunk.positives) for chunk in bad.chunks(5)])  # from a caller's own run
    with pytest.raises(MechkitError, match=r"solves only 50\.0% of the 24 positives"):
        check_solvable(toy, bad, min_accuracy=0.8, logits=logits)
    assert check_solvable(toy, toy_examples, logits=logits) == task_accuracy(toy, toy_examples) == 1.0


def test_discovery_refuses_a_model_that_cannot_do_the_task(tiny_tl):
    """A random tiny model cannot do induction: both discovery methods refuse before scoring."""
    examples = induction_examples(12)
    accuracy = task_accuracy(tiny_tl, examples)
    assert accuracy < 0.5
    with pytest.raises(MechkitError, match=f"solves only {accuracy:.1%}"):
        discover_circuit_sae(tiny_tl, examples, SAEDiscoveryConfig(n_epochs=1), verbose=False)
    with pytest.raises(MechkitError, match=f"solves only {accuracy:.1%}"):
        head_patching(tiny_tl, examples, verbose=False)
    with pytest.warns(UserWarning, match="solves only"):
        result = head_patching(tiny_tl, examples, on_unsolvable="warn", verbose=False)
    assert result.accuracy == accuracy


def test_answer_ids_outside_the_vocabulary_are_refused(toy):  # noqa: F811
    ex = CircuitExamples.from_token_ids("t", [[1, 5]], [[1, 6]], [10_000], [5])
    with pytest.raises(MechkitError, match="outside toy:induction's vocabulary"):
        task_accuracy(toy, ex)
