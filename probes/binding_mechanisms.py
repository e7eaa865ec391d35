"""Which mechanism retrieves a bound entity: interchange interventions (methods.md §4.1, Mixing Mechanisms).

For an original prompt querying group q, the counterfactual separates three mechanisms. Pick q' != q and two more
groups r and s (all four distinct, so n_groups >= 4). In the counterfactual, the answer entities of q' and s are
swapped, the query entities (the roles the question names) of q' and r are swapped, and the query asks about the
group at q'. Its last-token residual stream is patched into the original run at one layer; the prediction over the
original's candidates then says which information the patch carried:

- positional: the index q' of the counterfactual's queried group -> the original's answer at q';
- lexical: the counterfactual's query entities, which sit at r in the original -> the original's answer at r;
- reflexive: the counterfactual's own answer entity, which sits at s in the original -> the original's answer at s;
- no effect: the original's answer at q.

`make_interchange_pairs` builds the pairs, `interchange` patches every layer (one prefix pass per batch plus one
last-token pass per layer, `Subject.run_last_token_variants`) and classifies each outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.errors import MechkitError
from mechkit.interventions import ActivationPatch
from mechkit.subject import Subject
from mechkit.tasks.binding import BindingPrompt, BindingSchema, encode_prompts, get_task, make_prompts

MECHANISMS = ("positional", "lexical", "reflexive", "no_effect", "other")


@dataclass(frozen=True)
class InterchangePair:
    """An original prompt, its counterfactual, and the original group each outcome points to."""

    original: BindingPrompt
    counterfactual: BindingPrompt
    lexical: int  # r: the original group holding the counterfactual's query entities
    reflexive: int  # s: the original group holding the counterfactual's answer entity

    @property
    def positional(self) -> int:
        """q': the position of the counterfactual's queried group."""
        return self.counterfactual.query_position

    @property
    def no_effect(self) -> int:
        return self.original.query_position

    @property
    def targets(self) -> tuple[int, int, int, int]:
        """(positional, lexical, reflexive, no_effect) group indices, in MECHANISMS order."""
        return self.positional, self.lexical, self.reflexive, self.no_effect


def query_roles(task: BindingSchema, query: str | None = None) -> list[str]:
    """The roles a query names (its question and answer prefix), in schema order: the entities that select a group."""
    chosen = task.query(query)
    text = chosen.question + chosen.answer_prefix
    return [role for role in task.roles if "{" + role + "}" in text]


def make_interchange_pairs(
    task: str | BindingSchema, n_groups: int, n_pairs: int, seed: int = 0, query: str | None = None
) -> list[InterchangePair]:
    """`n_pairs` (original, counterfactual) pairs. Pair i's counterfactual queries position q' = i % n_groups (every
    position equally often); q, r and s are drawn with `numpy.random.default_rng((seed, n_groups, i, 1))` among the
    other positions. The originals are `make_prompts(task, n_groups, n_pairs, seed, query)` with q moved there."""
    schema = get_task(task)
    if n_groups < 4:
        raise MechkitError(f"interchange interventions need at least 4 groups (got {n_groups}) so that the "
                           "positional, lexical, reflexive and no-effect predictions point at different groups")
    keys, answer = query_roles(schema, query), schema.query(query).answer_role
    pairs = []
    for i, prompt in enumerate(make_prompts(schema, n_groups, n_pairs, seed, query)):
        moved = i % n_groups
        rng = np.random.default_rng((seed, n_groups, i, 1))
        q, r, s = (int(x) for x in rng.permutation([p for p in range(n_groups) if p != moved])[:3])
        groups = [dict(group) for group in prompt.groups]
        groups[moved][answer], groups[s][answer] = groups[s][answer], groups[moved][answer]
        for role in keys:
            groups[moved][role], groups[r][role] = groups[r][role], groups[moved][role]
        original = BindingPrompt(schema, prompt.query, prompt.groups, q)
        counterfactual = BindingPrompt(schema, prompt.query, tuple(groups), moved)
        pairs.append(InterchangePair(original, counterfactual, r, s))
    return pairs


@dataclass
class InterchangeResult:
    """Outcomes of last-token residual patching, counterfactual -> original, at each layer.

    candidate_logits [layer, pair, n_groups]: the patched run's logits at the original's candidate answers;
    targets [pair, 4]: the group each mechanism predicts (MECHANISMS order without "other");
    clean_correct [pair]: the model answers both the original and the counterfactual correctly (unpatched).
    """

    model: str
    task: str
    query: str
    n_groups: int
    seed: int
    layers: list[int]
    candidate_logits: Float[Tensor, "layer pair n_groups"]
    targets: Int[Tensor, "pair 4"]
    clean_correct: Tensor

    @property
    def outcome(self) -> Int[Tensor, "layer pair"]:
        """Index into MECHANISMS of each patched prediction (4 = "other": a group no mechanism predicts)."""
        predicted = self.candidate_logits.argmax(-1)
        hits = predicted[..., None] == self.targets[None]
        return torch.where(hits.any(-1), hits.long().argmax(-1), len(MECHANISMS) - 1)

    def counted(self, only_correct: bool) -> Tensor:
        """[pair] mask of the pairs counted: those answered correctly unpatched, or all."""
        return self.clean_correct if only_correct else torch.ones_like(self.clean_correct)

    def shares(self, only_correct: bool = True) -> Float[Tensor, "layer mechanism"]:
        """Share of pairs per outcome at each layer, over the pairs answered correctly when unpatched (default)."""
        keep = self.counted(only_correct)
        if not keep.any():
            raise MechkitError(f"{self.model} answers none of the {len(keep)} pairs correctly; pass only_correct=False "
                               "or use fewer groups")
        counts = torch.nn.functional.one_hot(self.outcome[:, keep], len(MECHANISMS)).double()
        return counts.mean(1)

    def shares_by_position(self, layer: int, only_correct: bool = True) -> Float[Tensor, "position mechanism"]:
        """Outcome shares at `layer` per counterfactual query position q' (NaN rows where no pair is kept)."""
        keep = self.counted(only_correct)
        row = self.layers.index(layer)
        onehot = torch.nn.functional.one_hot(self.outcome[row], len(MECHANISMS)).double()
        positional = self.targets[:, 0]
        return torch.stack([onehot[keep & (positional == p)].mean(0) for p in range(self.n_groups)])

    def answer_probs(self, layer: int) -> Float[Tensor, "pair n_groups"]:
        """The patched run's distribution over the original's candidates at `layer` (softmax of their logits)."""
        return self.candidate_logits[self.layers.index(layer)].softmax(-1)

    def records(self, only_correct: bool = True) -> list[dict]:
        """Tidy rows: model, task, query, n_groups, layer, query_position ("all" or q'), mechanism, share,
        n_pairs, seed."""
        keep = self.counted(only_correct)
        positional, overall = self.targets[:, 0], self.shares(only_correct)
        rows = []
        for row, layer in enumerate(self.layers):
            cells = [("all", overall[row], int(keep.sum()))]
            by_position = self.shares_by_position(layer, only_correct)
            cells += [(p, by_position[p], int((keep & (positional == p)).sum())) for p in range(self.n_groups)]
            rows += [dict(model=self.model, task=self.task, query=self.query, n_groups=self.n_groups, layer=layer,
                          query_position=position, mechanism=name, share=float(shares[m]), n_pairs=count,
                          seed=self.seed)
                     for position, shares, count in cells for m, name in enumerate(MECHANISMS)]
        return rows


def interchange(
    subject: Subject,
    task: str | BindingSchema,
    n_groups: int,
    n_pairs: int,
    layers: list[int] | None = None,
    seed: int = 0,
    query: str | None = None,
    chat: bool | None = None,
    batch_size: int = 8,
    verbose: bool = True,
) -> InterchangeResult:
    """Patch the counterfactual's last-token `blocks.{L}.hook_resid_pre` into the original, for every layer L in
    `layers` (default all), and read the original's candidate logits. All prompts are built and tokenized (answers
    must be single tokens) before the first forward pass."""
    layers = list(range(subject.n_layers)) if layers is None else list(layers)
    if not layers or any(not 0 <= layer < subject.n_layers for layer in layers):
        raise MechkitError(f"layers {layers} must be a non-empty list within 0..{subject.n_layers - 1}")
    if batch_size < 1:
        raise MechkitError(f"batch_size must be at least 1, got {batch_size}")
    schema = get_task(task)
    pairs = make_interchange_pairs(schema, n_groups, n_pairs, seed, query)
    originals = encode_prompts(subject, [p.original for p in pairs], chat, single_token=True)
    counterfactuals = encode_prompts(subject, [p.counterfactual for p in pairs], chat, single_token=True)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    logits, correct = [], []
    for start in tqdm(range(0, n_pairs, batch_size), desc=f"interchange, {n_groups} groups", disable=not verbose):
        rows = list(range(start, min(start + batch_size, n_pairs)))
        cf_logits, cache = subject.run_with_cache(counterfactuals.batch.select(rows), names, last_only=True)
        batch = originals.batch.select(rows)
        # run_last_token_variants shows hooks the last position only, so the patch is the source's last position
        patches = [ActivationPatch(name, cache[name][:, -1:], positions=(-1,)) for name in names]
        variants = [[]] + [patch.hooks(subject, batch) for patch in patches]
        patched = subject.run_last_token_variants(batch, variants).float().cpu()
        ids = originals.candidate_ids[rows]
        clean = patched[0].gather(-1, ids).argmax(-1) == originals.answer_index[rows]
        cf_ids = counterfactuals.candidate_ids[rows].to(cf_logits.device)
        cf_right = cf_logits[:, -1].gather(-1, cf_ids).argmax(-1).cpu() == counterfactuals.answer_index[rows]
        correct.append(clean & cf_right)
        logits.append(patched[1:].gather(-1, ids[None].expand(len(layers), -1, -1)))
    targets = torch.tensor([pair.targets for pair in pairs], dtype=torch.long)
    return InterchangeResult(subject.model_id, schema.name, schema.query(query).name, n_groups, seed, layers,
                             torch.cat(logits, dim=1), targets, torch.cat(correct))

