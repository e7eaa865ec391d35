"""Preplan-and-anchor attention rhythm (Li et al. 2025, arXiv 2510.13554) over a model's own reasoning.

Heads are split by their mean attention distance over the response rows: the shortest-span fraction are local,
the longest-span fraction global. Local heads give WAAD (windowed average attention distance) per response token,
global heads give FAI (future attention influence). Preplan tokens are where WAAD jumps (top-q of
|WAAD_t - WAAD_{t+1}|), anchor tokens where FAI is high (top-q). Coupling statistics compare the model's
next-token entropy at those tokens, and how often an anchor follows a preplan token, with shuffled positions.

Positions t, s index the sequence prompt + response; R is the set of response rows; A[t, s] is an attention
probability. Every formula is a pure function on attention rows (`head_spans`, `waad`, `fai`, ...). Over a Subject
the rows are streamed a block at a time (`Subject.iter_attention_blocks`) and reduced at once, so memory holds
one block of rows plus O(|R|) numbers per sequence, never a T x T pattern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.batch import Batch
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, all_heads
from mechkit.probes.rhythm_coupling import coupling_statistics
from mechkit.scores import HeadScores
from mechkit.subject import Subject
from mechkit.tasks.word_problems import WordProblem, plain_prompt, word_problems


# -- pure metrics on attention rows ----------------------------------------------------------------------------
def _positions(rows: Tensor, query_positions) -> Int[Tensor, " query"]:
    """Query positions of `rows`; default: the last `query` key positions (a response at the end)."""
    n_query, n_keys = rows.shape[-2:]
    if query_positions is None:
        return torch.arange(n_keys - n_query, n_keys, device=rows.device)
    return torch.as_tensor(query_positions, dtype=torch.long, device=rows.device)


def row_distances(rows: Float[Tensor, "*batch query key"], query_positions=None, clip: int | None = None
                  ) -> Float[Tensor, "*batch query"]:
    """Σ_s rows[t, s] · min(t − s, clip) per row t, in tokens (no clipping when clip is None)."""
    t = _positions(rows, query_positions)
    distance = (t[:, None] - torch.arange(rows.shape[-1], device=rows.device)[None]).clamp(min=0)
    if clip is not None:
        distance = distance.clamp(max=clip)
    return (rows * distance.to(rows.dtype)).sum(-1)


def head_spans(rows: Float[Tensor, "*batch head query key"], query_positions=None) -> Float[Tensor, "*batch head"]:
    """d(l, h) = mean over the response rows t of Σ_s A[t, s] · (t − s): each head's attention span in tokens."""
    return row_distances(rows, query_positions).mean(-1)


def split_heads(spans: Float[Tensor, "n_layers n_heads"], fraction: float = 0.3) -> tuple[list[HeadId], list[HeadId]]:
    """(local, global) heads, disjoint: the k = floor(fraction · n) shortest-span and the k longest-span heads
    (n = n_layers · n_heads, k at least 1; among equal spans the earlier head counts as shorter)."""
    check_fraction(fraction)
    heads = all_heads(*spans.shape)
    k = max(1, math.floor(fraction * len(heads) + 1e-9))
    if 2 * k > len(heads):
        raise MechkitError(f"{len(heads)} heads cannot give {k} local and {k} global heads; use a larger model")
    order = torch.argsort(spans.flatten().double(), stable=True).tolist()
    return sorted(heads[i] for i in order[:k]), sorted(heads[i] for i in order[-k:])


def waad(local_rows: Float[Tensor, "*batch query key"], window: int = 10, query_positions=None
         ) -> Float[Tensor, "*batch query"]:
    """WAAD_t = Σ_s Ā^loc[t, s] · min(t − s, W): the local heads' mean attention distance, clipped at W tokens."""
    return row_distances(local_rows, query_positions, clip=window)


def _band(query_positions: Tensor, key_positions: Tensor, h_lo: int, h_hi: int) -> Bool[Tensor, "query key"]:
    lag = query_positions[:, None] - key_positions[None, :]
    return (lag >= h_lo) & (lag <= h_hi)


def _band_sums(rows: Float[Tensor, "*batch query key"], query_positions: Tensor, key_positions: Tensor, h_lo: int,
               h_hi: int) -> Float[Tensor, "*batch n_keys"]:
    """Σ_t rows[t, s] over the rows t with h_lo ≤ t − s ≤ h_hi, for each s in key_positions."""
    query_positions, key_positions = query_positions.to(rows.device), key_positions.to(rows.device)
    band = _band(query_positions, key_positions, h_lo, h_hi).to(rows.dtype)
    return (rows[..., key_positions] * band).sum(-2)


def fai(global_rows: Float[Tensor, "*batch query key"], h_lo: int = 10, h_hi: int = 100, query_positions=None
        ) -> Float[Tensor, "*batch query"]:
    """FAI_s = mean over T(s) = {t ∈ R : s + h_lo ≤ t ≤ s + h_hi} of Ā^glob[t, s], for each response token s
    (the rows' own positions R); NaN where T(s) is empty (the last h_lo tokens)."""
    t = _positions(global_rows, query_positions)
    counts = _band(t, t, h_lo, h_hi).sum(0).to(global_rows.dtype)
    return _band_sums(global_rows, t, t, h_lo, h_hi) / counts


def waad_delta(waad_values: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Δ_t = |WAAD_t − WAAD_{t+1}|; NaN for the last token."""
    delta = torch.full_like(waad_values, float("nan"))
    delta[:-1] = (waad_values[:-1] - waad_values[1:]).abs()
    return delta


def top_quantile(values: Float[Tensor, " n"], q: float = 0.4) -> Bool[Tensor, " n"]:
    """The ceil(q · m) largest of the m non-NaN values (ties go to the earlier position)."""
    check_quantile(q)
    finite = ~torch.isnan(values)
    k = math.ceil(q * int(finite.sum()) - 1e-9)
    order = torch.argsort(torch.where(finite, -values, math.inf), stable=True)
    chosen = torch.zeros_like(finite)
    chosen[order[:k]] = True
    return chosen


def preplan_tokens(waad_values: Float[Tensor, " n"], q: float = 0.4) -> Bool[Tensor, " n"]:
    """T_loc = TopQ(Δ, q): the tokens right before the largest WAAD jumps."""
    return top_quantile(waad_delta(waad_values), q)


def anchor_tokens(fai_values: Float[Tensor, " n"], q: float = 0.4) -> Bool[Tensor, " n"]:
    """T_glob = TopQ(FAI, q): the tokens later tokens attend to most (NaN FAI never qualifies)."""
    return top_quantile(fai_values, q)


def next_token_entropy(logits: Float[Tensor, "*batch pos vocab"]) -> Float[Tensor, "*batch pos"]:
    """Entropy (nats) of the model's next-token distribution at each position."""
    return torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(-1)


# -- configuration -------------------------------------------------------------------------------------------
def check_quantile(q: float) -> None:
    if not 0 < q < 1:
        raise MechkitError(f"quantile q {q} is outside (0, 1); pass e.g. 0.4 (the top 40% of tokens)")


def check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 0.5:
        raise MechkitError(f"head fraction {fraction} is outside (0, 0.5]; pass e.g. 0.3 (30% local, 30% global)")


@dataclass(frozen=True)
class RhythmConfig:
    """Everything that defines an attention-rhythm run (checked on construction, before any model work).

    window W and the FAI band [h_lo, h_hi] are in tokens; q is the top fraction of tokens selected as preplan /
    anchor tokens; head_fraction the share of heads called local (and as many global); shots the worked examples
    before each question for models without a chat template (chat models are asked zero-shot in their template).
    """

    seed: int = 0
    n_problems: int = 8
    max_new_tokens: int = 128
    window: int = 10
    h_lo: int = 10
    h_hi: int = 100
    q: float = 0.4
    head_fraction: float = 0.3
    n_shuffles: int = 1000
    shots: int = 1

    def __post_init__(self) -> None:
        if self.n_problems < 1:
            raise MechkitError(f"n_problems {self.n_problems} must be at least 1; pass 1 or more problems")
        if self.window < 1 or self.h_lo < 0:
            raise MechkitError(f"window {self.window} must be >= 1 and h_lo {self.h_lo} >= 0; pass e.g. 10 and 10")
        if self.h_lo > self.h_hi:
            raise MechkitError(f"h_lo {self.h_lo} is larger than h_hi {self.h_hi}; pass h_lo <= h_hi")
        longest = max(self.window, self.h_lo)
        if longest >= self.max_new_tokens:
            raise MechkitError(f"window {self.window} / h_lo {self.h_lo} must be smaller than the response "
                               f"(max_new_tokens {self.max_new_tokens}); generate more than {longest} tokens")
        check_quantile(self.q)
        check_fraction(self.head_fraction)
        if self.n_shuffles < 1:
            raise MechkitError(f"n_shuffles {self.n_shuffles} must be at least 1; pass e.g. 1000")
        plain_prompt("", self.shots)  # checks the number of worked examples

    def to_dict(self) -> dict:
        return asdict(self)


# -- results -------------------------------------------------------------------------------------------------
@dataclass
class ResponseRhythm:
    """One response (`text`, its `tokens` decoded one by one) and its token metrics, each [n] over its n tokens:
    waad (tokens), fai (attention probability, NaN for the last h_lo tokens), entropy (nats, of the model's
    distribution over the next token), preplan / anchor masks. `index` numbers the problem (or input pair)."""

    index: int
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    tokens: list[str]
    waad: Float[Tensor, " n"]
    fai: Float[Tensor, " n"]
    entropy: Float[Tensor, " n"]
    preplan: Bool[Tensor, " n"]
    anchor: Bool[Tensor, " n"]
    problem: WordProblem | None = None


@dataclass
class RhythmResult:
    """Per-head spans ("attention_span", tokens), the head split, per-response metrics, coupling statistics
    (records as from `rhythm_coupling.coupling_statistics`), and the problems skipped for too short a response."""

    spans: HeadScores
    local_heads: list[HeadId]
    global_heads: list[HeadId]
    responses: list[ResponseRhythm]
    coupling: list[dict]
    skipped: list[int] = field(default_factory=list)


# -- streaming over a Subject --------------------------------------------------------------------------------
def _response_rows(batch: Batch, n_response: Tensor) -> tuple[Tensor, Tensor]:
    """(positions of the longest response's rows, valid [batch, rows]: the row is in that sequence's response)."""
    width = batch.tokens.shape[1]
    positions = torch.arange(width - int(n_response.max()), width)
    return positions, positions[None] >= (width - n_response)[:, None]


def _span_sums(subject: Subject, batch: Batch, n_response: Tensor, block_size: int
               ) -> Float[Tensor, "n_layers n_heads"]:
    """Σ over the batch's response rows t of Σ_s A[t, s](t − s), per head (pass 1)."""
    positions, valid = _response_rows(batch, n_response)
    sums = torch.zeros(subject.n_layers, subject.n_heads, dtype=torch.float64)
    for layer, block, rows in subject.iter_attention_blocks(batch, None, positions, block_size):
        mask = valid[:, block - positions[0]].to(rows)
        sums[layer] += (row_distances(rows, block) * mask[:, None]).sum((0, 2)).double().cpu()
    return sums


def _head_weights(subject: Subject, heads: Sequence[HeadId]) -> Float[Tensor, "n_layers n_heads"]:
    weights = torch.zeros(subject.n_layers, subject.n_heads, dtype=torch.float64)
    for head in heads:
        weights[head.layer, head.head] = 1.0 / len(heads)
    return weights


def _rhythm_batch(subject: Subject, batch: Batch, n_response: Tensor, local: Tensor, glob: Tensor,
                  config: RhythmConfig, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """WAAD, FAI and entropy [batch, rows] over the longest response's rows (pass 2; only layers holding a local
    or global head are streamed)."""
    positions, _ = _response_rows(batch, n_response)
    first = int(positions[0])
    layers = sorted({int(layer) for layer in torch.nonzero(local + glob)[:, 0]})
    waad_sum = torch.zeros(len(batch), len(positions), dtype=torch.float64)
    fai_sum = torch.zeros_like(waad_sum)
    for layer, block, rows in subject.iter_attention_blocks(batch, layers, positions, block_size):
        if local[layer].any():
            per_head = waad(rows, config.window, block)
            waad_sum[:, block - first] += torch.einsum("bhq,h->bq", per_head.double().cpu(), local[layer])
        if glob[layer].any():
            mean_rows = torch.einsum("bhqk,h->bqk", rows, glob[layer].to(rows))
            band = _band_sums(mean_rows, block, positions, config.h_lo, config.h_hi)
            fai_sum += band.double().cpu()
    counts = _band(positions, positions, config.h_lo, config.h_hi).sum(0).double()
    logits = subject.run_with_hooks(batch)[:, first:]
    entropy = torch.cat([next_token_entropy(chunk) for chunk in logits.split(32, dim=1)], dim=1)  # bounded memory
    return waad_sum, fai_sum / counts, entropy.double().cpu()


def _batches(subject: Subject, sequences: list[list[int]], n_response: list[int], batch_size: int):
    for start in range(0, len(sequences), batch_size):
        chunk = slice(start, start + batch_size)
        yield (start, Batch.from_sequences(sequences[chunk], pad_id=subject.pad_id),
               torch.tensor(n_response[chunk], dtype=torch.long))


def measure_responses(subject: Subject, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                      config: RhythmConfig, batch_size: int = 1, block_size: int = 256, verbose: bool = True
                      ) -> RhythmResult:
    """Spans, head split, WAAD / FAI / entropy per response token, preplan and anchor tokens, and the coupling
    statistics, for given prompt + response token ids (each response follows its prompt).

    Pass 1 streams every layer's response rows to the pooled spans (mean over all response rows of all pairs);
    pass 2 streams the layers of the local and global heads again and keeps only WAAD per row and FAI sums per
    key; one more forward pass gives the logits for the entropies."""
    if len(prompts) != len(responses) or not responses:
        raise MechkitError(f"got {len(prompts)} prompts and {len(responses)} responses; pass one prompt per response")
    for i, response in enumerate(responses):
        if len(response) <= max(config.window, config.h_lo):
            raise MechkitError(f"response {i} has {len(response)} tokens, not more than the window {config.window} / "
                               f"h_lo {config.h_lo}; pass longer responses or a smaller window and h_lo")
    sequences = [list(p) + list(r) for p, r in zip(prompts, responses)]
    n_response = [len(r) for r in responses]
    sums = torch.zeros(subject.n_layers, subject.n_heads, dtype=torch.float64)
    with torch.no_grad():
        for _, batch, n in tqdm(list(_batches(subject, sequences, n_response, batch_size)), desc="spans (pass 1)",
                                disable=not verbose):
            sums += _span_sums(subject, batch, n, block_size)
    spans = HeadScores(sums / sum(n_response), metric="attention_span", model=subject.model_id,
                       n_items=len(responses), seed=config.seed, config=config.to_dict())
    local, glob = split_heads(spans.scores, config.head_fraction)
    weights = _head_weights(subject, local), _head_weights(subject, glob)
    measured = []
    with torch.no_grad():
        for start, batch, n in tqdm(list(_batches(subject, sequences, n_response, batch_size)),
                                    desc="rhythm (pass 2)", disable=not verbose):
            tables = _rhythm_batch(subject, batch, n, *weights, config, block_size)
            for row, length in enumerate(n.tolist()):
                index = start + row
                waad_row, fai_row, entropy = (table[row, -length:] for table in tables)
                ids = list(responses[index])
                measured.append(ResponseRhythm(
                    index, list(prompts[index]), ids, subject.tokenizer.decode(ids),
                    [subject.tokenizer.decode([i]) for i in ids], waad_row, fai_row, entropy,
                    preplan_tokens(waad_row, config.q), anchor_tokens(fai_row, config.q)))
    coupling = coupling_statistics(measured, config.n_shuffles, config.seed)
    return RhythmResult(spans, local, glob, measured, coupling)


# -- the whole run ---------------------------------------------------------------------------------------------
def problem_prompt(subject: Subject, question: str, shots: int = 1) -> list[int]:
    """Token ids of the prompt: one user turn of the chat template when the tokenizer has one, else
    `plain_prompt(question, shots)` (with BOS when the model wants one)."""
    tokenizer = subject.tokenizer
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        return subject.tokenize(text, prepend_bos=False).tokens[0].tolist()
    return subject.tokenize(plain_prompt(question, shots)).tokens[0].tolist()


def answer_problems(subject: Subject, problems: Sequence[WordProblem], config: RhythmConfig, batch_size: int = 1,
                    verbose: bool = True) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, greedy response ids) per problem; a response ends after EOS or `max_new_tokens`."""
    prompts = [problem_prompt(subject, p.question, config.shots) for p in problems]
    eos = subject.tokenizer.eos_token_id
    responses = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="answering", disable=not verbose):
        batch = Batch.from_sequences(prompts[start:start + batch_size], pad_id=subject.pad_id)
        decoded = subject.greedy_decode(batch, config.max_new_tokens, [] if eos is None else [eos],
                                        track_heads=False)
        responses += [decoded.generated(row) for row in range(len(batch))]
    return prompts, responses


def attention_rhythm(subject: Subject, config: RhythmConfig, batch_size: int = 1, block_size: int = 256,
                     verbose: bool = True) -> RhythmResult:
    """Generate `config.n_problems` word problems, let the subject answer them greedily, and measure the rhythm of
    its answers (`measure_responses`). Answers of at most max(window, h_lo) tokens are skipped and listed."""
    problems = word_problems(config.n_problems, config.seed)
    prompts, responses = answer_problems(subject, problems, config, batch_size, verbose)
    keep = [i for i, r in enumerate(responses) if len(r) > max(config.window, config.h_lo)]
    if not keep:
        raise MechkitError(f"all {len(responses)} responses ended within {max(config.window, config.h_lo)} tokens; "
                           "pass a smaller window and h_lo")
    result = measure_responses(subject, [prompts[i] for i in keep], [responses[i] for i in keep], config,
                               batch_size, block_size, verbose)
    for response, index in zip(result.responses, keep):
        response.index, response.problem = index, problems[index]
    result.skipped = [i for i in range(len(responses)) if i not in keep]
    return result
