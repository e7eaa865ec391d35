"""Retrieval heads (Wu et al. 2024): which heads copy the needle's answer out of a long context.

The score is computed exactly as the paper's code does (`retrieval_head_detection.py`): greedy decoding; at each
decode step, a head whose most-attended key lies in the needle's answer span and holds the token just generated
earns 1 / len(answer span); only trials answered correctly (ROUGE-1 recall > 0.5) count; a head's score is the
mean over counted trials. A trial costs one prefill (last-position logits only) plus the cached decode of the
answer; the attention rows of the decode steps are recomputed from captured q/k and reduced to their argmax at
once (`mechkit.decoding`), so no attention matrix is ever kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.decoding import Decoded
from mechkit.heads import HeadId, random_heads
from mechkit.interventions import UniformAttention
from mechkit.niah import Trial, rouge1_recall
from mechkit.results import TrialLog
from mechkit.scores import HeadScores
from mechkit.subject import Subject

CORRECT_RECALL = 0.5  # a trial counts when ROUGE-1 recall of the answer exceeds this (the paper's 50 %)


def newline_stop_ids(tokenizer) -> list[int]:
    """Token ids that decode to text containing a newline, plus EOS: the paper stops at the first newline."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    stops = {i for i, text in enumerate(texts) if "\n" in text}
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    return sorted(stops)


def retrieval_hits(
    argmax: Int[Tensor, "steps n_layers n_heads"],
    generated: Sequence[int],
    input_ids: Sequence[int],
    answer_span: tuple[int, int],
) -> Float[Tensor, "n_layers n_heads"]:
    """Per head, sum over decode steps of 1/len(span) when its argmax key is in the span and holds the token
    generated at that step (argmax indexes the trial's own sequence; steps beyond `generated` are ignored)."""
    start, end = answer_span
    steps = argmax[: len(generated)]
    prompt = torch.as_tensor(list(input_ids), dtype=torch.long)
    in_span = (steps >= start) & (steps < end)
    held = prompt[steps.clamp(0, len(prompt) - 1)]
    copied = in_span & (held == torch.as_tensor(list(generated), dtype=torch.long)[:, None, None])
    return copied.sum(0).double() / (end - start)


@dataclass
class TrialOutcome:
    """One needle-in-a-haystack trial: the response, its ROUGE-1 recall, and the heads' hits (if counted)."""

    trial_id: str
    needle_index: int
    context_length: int
    depth_percent: int
    n_tokens: int
    response: str
    recall: float
    counted: bool
    hits: list[list[float]] = field(default_factory=list)  # [[layer, head, hit], ...] for heads with a hit > 0

    def hit_tensor(self, n_layers: int, n_heads: int) -> Tensor:
        table = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        for layer, head, value in self.hits:
            table[int(layer), int(head)] = value
        return table


def run_trials(
    subject: Subject,
    trials: Sequence[Trial],
    max_new_tokens: int = 32,
    batch_size: int = 1,
    interventions=(),
    track_heads: bool = True,
    log: TrialLog | None = None,
    verbose: bool = True,
    stops: Sequence[int] | None = None,
) -> list[TrialOutcome]:
    """Decode every trial (resuming from `log`: trials already recorded there are read back, not rerun).

    stops: token ids ending an answer (default: `newline_stop_ids`, computed here when not given)."""
    done = {record["trial_id"]: TrialOutcome(**record) for record in log.records()} if log is not None else {}
    todo = [trial for trial in trials if trial.trial_id not in done]
    stops = newline_stop_ids(subject.tokenizer) if stops is None else stops
    todo.sort(key=lambda t: len(t.input_ids))  # similar lengths share a batch: little padding
    bar = tqdm(total=len(todo), desc="trials", disable=not verbose)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        batch = subject.to_batch(_left_pad(subject, chunk))
        decoded = subject.greedy_decode(batch, max_new_tokens, stops, interventions, track_heads)
        for row, trial in enumerate(chunk):
            outcome = _outcome(subject, trial, decoded, row, track_heads)
            done[trial.trial_id] = outcome
            if log is not None:
                log.append(asdict(outcome))
        bar.update(len(chunk))
    bar.close()
    return [done[trial.trial_id] for trial in trials]


def _left_pad(subject: Subject, trials: Sequence[Trial]):
    from mechkit.batch import Batch

    return Batch.from_sequences([list(t.input_ids) for t in trials], pad_id=subject.pad_id)


def _outcome(subject: Subject, trial: Trial, decoded: Decoded, row: int, track_heads: bool) -> TrialOutcome:
    generated = decoded.generated(row)
    response = subject.tokenizer.decode(generated, skip_special_tokens=True).strip()
    recall = rouge1_recall(trial.needle.answer, response)
    counted = recall > CORRECT_RECALL
    hits = []
    if counted and track_heads:
        table = retrieval_hits(decoded.argmax[:, row], generated, trial.input_ids, trial.answer_span)
        hits = [[layer, head, float(table[layer, head])] for layer, head in torch.nonzero(table).tolist()]
    return TrialOutcome(trial.trial_id, trial.needle_index, trial.context_length, trial.depth_percent,
                        len(trial.input_ids), response, recall, counted, hits)


def retrieval_scores(subject: Subject, outcomes: Iterable[TrialOutcome], config: dict, seed: int | None = None
                     ) -> HeadScores:
    """Mean hits over counted trials ([n_layers, n_heads]); all NaN when no trial was answered correctly."""
    counted = [o for o in outcomes if o.counted]
    total = torch.zeros(subject.n_layers, subject.n_heads, dtype=torch.float64)
    for outcome in counted:
        total += outcome.hit_tensor(subject.n_layers, subject.n_heads)
    scores = total / len(counted) if counted else torch.full_like(total, float("nan"))
    return HeadScores(scores, metric="retrieval", model=subject.model_id, n_items=len(counted), seed=seed,
                      config=config)


def masking_curves(
    subject: Subject,
    scores: HeadScores,
    trials: Sequence[Trial],
    ks: Sequence[int],
    n_draws: int = 3,
    seed: int = 0,
    max_new_tokens: int = 32,
    batch_size: int = 1,
    verbose: bool = True,
) -> list[dict]:
    """NIAH recall with the top-k retrieval heads masked to uniform attention vs k random heads drawn from
    outside the top-max(ks) list (`n_draws` draws per k), as in the paper's masking experiment.

    Records: {"k", "kind": "top" | "random" | "none", "draw", "heads", "recall"} (recall = mean ROUGE-1 recall).
    """
    rng = np.random.default_rng(seed)
    stops = newline_stop_ids(subject.tokenizer)
    top_list = [head for head, _ in scores.top(max(ks))]
    settings = [("none", 0, 0, [])]
    for k in ks:
        settings.append(("top", k, 0, top_list[:k]))
        settings += [("random", k, d, random_heads(subject.n_layers, subject.n_heads, k, top_list, rng))
                     for d in range(n_draws)]
    records = []
    for kind, k, draw, heads in tqdm(settings, desc="masking", disable=not verbose):
        interventions = [UniformAttention(heads)] if heads else []
        outcomes = run_trials(subject, trials, max_new_tokens, batch_size, interventions, track_heads=False,
                              verbose=False, stops=stops)
        recall = float(np.mean([o.recall for o in outcomes]))
        records.append({"k": k, "kind": kind, "draw": draw, "heads": [h.label for h in heads], "recall": recall})
    return records


@dataclass(frozen=True)
class RetrievalConfig:
    """Everything that defines a retrieval-head scan (recorded in outputs; a trials log of another config is refused).

    lengths: prompt lengths in tokens; depths: needle depths in percent of the context; needles: "a", "b", "all"
    (the built-in needle sets) or a JSONL path; haystack: "builtin", "passkey" or a text file / directory path.
    """

    model: str
    lengths: tuple[int, ...] = (1000, 2000, 3000, 4000)
    depths: tuple[int, ...] = (0, 25, 50, 75, 100)
    needles: str = "a"
    haystack: str = "builtin"
    max_new_tokens: int = 32
    threshold: float = 0.1
    seed: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "lengths": list(self.lengths), "depths": list(self.depths)}


def build_trials(subject: Subject, config: RetrievalConfig) -> list[Trial]:
    """The config's length x depth x needle grid as trials for this subject (chat template for instruct models)."""
    from mechkit import niah
    from mechkit.models.registry import REGISTRY

    niah.check_lengths(config.lengths, subject.context_length - config.max_new_tokens, subject.model_id)
    if config.haystack == "passkey":
        haystack = niah.passkey_haystack()
        needles = [niah.passkey_needle(config.seed + i) for i in range(3)]
    else:
        haystack = niah.builtin_haystack() if config.haystack == "builtin" else niah.read_haystack(config.haystack)
        needles = (niah.needle_set(config.needles) if config.needles in ("a", "b", "all")
                   else niah.load_needles(config.needles))
    spec = REGISTRY.get(subject.model_id)
    chat = bool(spec and spec.chat)
    return [
        niah.build_trial(subject.tokenizer, haystack, needles[i], length, depth, prepend_bos=subject.prepend_bos,
                         chat=chat, needle_index=i)
        for i, length, depth in niah.trial_grid(config.lengths, config.depths, needles)
    ]


@dataclass
class RetrievalResult:
    """Scores of a scan, its per-trial outcomes, and the masking curves when validated."""

    scores: HeadScores
    outcomes: list[TrialOutcome]
    masking: list[dict] = field(default_factory=list)

    @property
    def retrieval_heads(self) -> list[HeadId]:
        return self.scores.above(self.scores.config.get("threshold", 0.1))


def find_retrieval_heads(
    subject: Subject,
    config: RetrievalConfig,
    log: TrialLog | None = None,
    batch_size: int = 1,
    verbose: bool = True,
) -> RetrievalResult:
    """Run the needle-in-a-haystack grid and score every head (resuming from `log` when given)."""
    trials = build_trials(subject, config)
    outcomes = run_trials(subject, trials, config.max_new_tokens, batch_size, log=log, verbose=verbose)
    return RetrievalResult(retrieval_scores(subject, outcomes, config.to_dict(), config.seed), outcomes)
