"""Linear probes (scikit-learn): what each layer's activations encode linearly, against a shuffled-label control.

`probe_layers` works for any integer label: per layer, StandardScaler + multinomial LogisticRegression,
cross-validated (`fold_splits`), and the same probe on permuted labels, whose accuracy should sit near chance.
When items come in groups (the entities of one prompt), whole groups go to one fold: items of one prompt share
their context, so a probe tested on a prompt it was trained on can recognise the prompt instead of the label
(leakage), and cross-validated accuracy would overstate what generalises to new prompts.

The control permutes the whole label vector once with `numpy.random.default_rng(seed)` and runs the same
cross-validation on it (folds split the same way, on the permuted labels), as one permutation of
`sklearn.model_selection.permutation_test_score`: features keep their structure, labels lose their link to them.
It does not permute within groups, which would leave a label that is constant within groups (a property of the
prompt) unchanged and the control no control.

Binding IDs (methods.md §4): `binding_id_features` reads the residual stream at the last token of each group's
entity of one role in the context, labelled by the group's index 0..n-1 (its order in the context), and
`binding_id_probe` probes it per layer. The group index is also the clause's ordinal position, so a probe can
succeed by reading position; the shuffled-label control does not rule that out.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.errors import MechkitError
from mechkit.subject import Subject
from mechkit.tasks.binding import BindingPrompt, BindingSchema, EncodedPrompts, encode_prompts, get_task, make_prompts

HOOKS = ("resid_pre", "resid_mid", "resid_post")


@dataclass
class ProbeResult:
    """Held-out accuracy (share of items, 0..1) of one probe per layer, mean and standard deviation over the folds.

    accuracy, accuracy_std: [layer] on the true labels; control, control_std: [layer] on shuffled labels (NaN
    when not run); chance: frequency of the majority class; layers: the label of each entry (by default the index
    along the features' layer axis).
    """

    accuracy: Float[np.ndarray, " layer"]
    accuracy_std: Float[np.ndarray, " layer"]
    control: Float[np.ndarray, " layer"]
    control_std: Float[np.ndarray, " layer"]
    chance: float
    n_items: int
    n_classes: int
    n_folds: int
    seed: int
    layers: list

    @property
    def best_layer(self):
        """The layer with the highest accuracy (the first on ties)."""
        return self.layers[int(np.argmax(self.accuracy))]

    def records(self) -> list[dict]:
        """Tidy rows: layer, metric ("accuracy" | "control"), score, std (over folds), chance, n_items, n_classes,
        n_folds, seed; no control rows when the control was not run."""
        rows = []
        for metric, score, std in (("accuracy", self.accuracy, self.accuracy_std),
                                   ("control", self.control, self.control_std)):
            if np.isnan(score).all():
                continue
            rows += [{"layer": layer, "metric": metric, "score": float(s), "std": float(d), "chance": self.chance,
                      "n_items": self.n_items, "n_classes": self.n_classes, "n_folds": self.n_folds, "seed": self.seed}
                     for layer, s, d in zip(self.layers, score, std)]
        return rows


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _check_labels(labels, groups, n_folds: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels and groups as arrays, refused unless every fold can hold every class."""
    y = _numpy(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise MechkitError(f"labels must be a 1-D array of integers, got {y.dtype} of shape {tuple(y.shape)}; "
                           "pass one integer class per item")
    if n_folds < 2:
        raise MechkitError(f"n_folds must be at least 2, got {n_folds}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise MechkitError(f"labels hold {len(classes)} class(es), and a probe needs at least 2; pass items of "
                           "several classes")
    if counts.min() < n_folds:
        small = int(np.argmin(counts))
        raise MechkitError(f"class {classes[small]} has {counts[small]} item(s), fewer than n_folds={n_folds}; "
                           "add items of that class or lower n_folds")
    if groups is None:
        return y, None
    g = _numpy(groups)
    if g.shape != y.shape:
        raise MechkitError(f"groups has shape {tuple(g.shape)} but labels {tuple(y.shape)}; pass one group "
                           "(e.g. the prompt index) per item")
    if len(np.unique(g)) < n_folds:
        raise MechkitError(f"groups hold {len(np.unique(g))} distinct values, fewer than n_folds={n_folds}, and "
                           "each fold needs whole groups; add groups or lower n_folds")
    return y, g


def fold_splits(
    labels: Int[np.ndarray | Tensor, " n"],
    groups: Int[np.ndarray | Tensor, " n"] | None = None,
    n_folds: int = 5,
    seed: int = 0,
) -> list[tuple[Int[np.ndarray, " train"], Int[np.ndarray, " test"]]]:
    """(train, test) item indices of each fold: StratifiedKFold, or StratifiedGroupKFold when `groups` is given
    (all items of one group in one test fold), shuffled with `random_state=seed`."""
    y, g = _check_labels(labels, groups, n_folds)
    if g is None:
        cv = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    else:
        cv = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, g))


def _fold_accuracies(x: np.ndarray, y: np.ndarray, splits, C: float, max_iter: int) -> np.ndarray:
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    return np.array([probe.fit(x[train], y[train]).score(x[test], y[test]) for train, test in splits])


def probe_layers(
    features: Float[np.ndarray | Tensor, "n layer d"],
    labels: Int[np.ndarray | Tensor, " n"],
    groups: Int[np.ndarray | Tensor, " n"] | None = None,
    n_folds: int = 5,
    seed: int = 0,
    control: bool = True,
    C: float = 1.0,
    max_iter: int = 1000,
    layers: Sequence | None = None,
    verbose: bool = True,
) -> ProbeResult:
    """Cross-validated accuracy of a linear probe from features[:, l] to `labels`, for each layer l.

    The probe is StandardScaler + LogisticRegression (multinomial for more than 2 classes, L2 strength 1/C),
    fitted in float64 on each training fold; folds come from `fold_splits(labels, groups, n_folds, seed)`.
    `control` also probes the labels permuted once with default_rng(seed), on folds split the same way.
    `layers` names the entries of the layer axis (default 0..layer-1). Same seed, same numbers. Input is checked
    before any fit.
    """
    if isinstance(features, Tensor):
        features = features.detach().cpu()
        features = features if features.dtype in (torch.float32, torch.float64) else features.float()
    x = np.asarray(features)
    if x.ndim != 3 or 0 in x.shape:
        raise MechkitError(f"features must be [item, layer, d] with no empty axis, got shape {tuple(x.shape)}; "
                           "stack each layer's activations along axis 1")
    n_items, n_layers, _ = x.shape
    if _numpy(labels).shape[:1] != (n_items,):
        raise MechkitError(f"features hold {n_items} items but labels have shape {tuple(_numpy(labels).shape)}; "
                           "pass one label per item")
    names = list(range(n_layers)) if layers is None else list(layers)
    if len(names) != n_layers:
        raise MechkitError(f"layers has {len(names)} entries but features have {n_layers} layers; pass one name "
                           "per entry of the features' layer axis")
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)
        raise MechkitError(f"features hold {len(bad)} NaN or infinite values (the first at item {bad[0][0]}, layer "
                           f"{names[bad[0][1]]}); drop or fix those items")
    y, g = _check_labels(labels, groups, n_folds)
    runs = [(y, fold_splits(y, g, n_folds, seed))]
    if control:
        shuffled = np.random.default_rng(seed).permutation(y)
        runs.append((shuffled, fold_splits(shuffled, g, n_folds, seed)))
    scores = np.full((2, 2, n_layers), np.nan)  # (true labels, control) x (mean, std over folds) x layer
    for layer in tqdm(range(n_layers), desc="linear probes", disable=not verbose):
        xl = np.asarray(x[:, layer], dtype=np.float64)
        for run, (target, splits) in enumerate(runs):
            folds = _fold_accuracies(xl, target, splits, C, max_iter)
            scores[run, :, layer] = folds.mean(), folds.std()
    counts = np.unique(y, return_counts=True)[1]
    return ProbeResult(scores[0, 0], scores[0, 1], scores[1, 0], scores[1, 1], chance=float(counts.max() / n_items),
                       n_items=n_items, n_classes=len(counts), n_folds=n_folds, seed=seed, layers=names)


# --- binding IDs ---------------------------------------------------------------------------------------------------


def _entity_spans(prompt: BindingPrompt, role: str) -> list[tuple[int, int]]:
    """Character span [start, end) in `prompt.context` of each group's `role` entity (its last mention in the
    clause), from the template's field positions, so an entity that also occurs inside the template's words is
    not mistaken for it."""
    task = prompt.task
    spans, at = [], len(task.prefix)
    for group in prompt.groups:
        for literal, field, _, _ in string.Formatter().parse(task.clause):
            at += len(literal)
            if field is not None:
                if field == role:
                    span = (at, at + len(group[field]))
                at += len(group[field])
        spans.append(span)
        at += len(task.separator)
    return spans


def _check_role(task: BindingSchema, role: str) -> None:
    if role not in task.roles:
        raise MechkitError(f"role {role!r} is not a role of binding task {task.name!r}; use one of "
                           f"{', '.join(task.roles)}")


def entity_positions(
    subject: Subject, prompts: Sequence[BindingPrompt], role: str, chat: bool | None = None
) -> tuple[EncodedPrompts, Int[Tensor, "prompt n_groups"]]:
    """The prompts as `encode_prompts(subject, prompts, chat)` encodes them, and for each prompt and group the
    column in that (left-padded) batch of the last token of the group's `role` entity in the context: the token
    holding the entity's last character, found through the tokenizer's character offsets."""
    if not prompts:
        raise MechkitError("no prompts given; build them with make_prompts")
    for prompt in prompts:
        _check_role(prompt.task, role)
    tokenizer = subject.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise MechkitError(f"{subject.model_id}'s tokenizer is not a fast tokenizer, so it gives no character "
                           "offsets to locate entities with; load the model with its fast (Rust) tokenizer")
    encoded = encode_prompts(subject, prompts, chat)
    bos = 0 if encoded.chat else len(subject.bos_prefix)
    width = encoded.batch.tokens.shape[1]
    positions = torch.empty((len(prompts), len(prompts[0].groups)), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        text, _ = prompt.render(tokenizer, encoded.chat)
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        context = text.find(prompt.context)
        if context < 0:
            raise MechkitError(f"{subject.model_id}'s chat template changes the context of binding task "
                               f"{prompt.task.name!r}, so its entities cannot be located; encode with chat=False")
        first = width - int(encoded.batch.lengths[row]) + bos  # the column of the text's first token
        for group, (start, end) in enumerate(_entity_spans(prompt, role)):
            start, end = start + context, end + context
            positions[row, group] = first + max(i for i, (a, b) in enumerate(offsets) if a < end and b > start)
    return encoded, positions


def binding_id_features(
    subject: Subject,
    prompts: Sequence[BindingPrompt],
    role: str,
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    chat: bool | None = None,
    batch_size: int = 8,
    verbose: bool = True,
) -> tuple[Float[Tensor, "item layer d_model"], Int[Tensor, " item"], Int[Tensor, " item"]]:
    """(features, labels, groups) with one item per prompt and group, prompt-major (item = prompt * n_groups +
    group): features [item, layer, d_model] float32 on the CPU, `blocks.{l}.hook_{hook}` at the last token of the
    group's `role` entity in the context (see `entity_positions`) for each l in `layers` (default: all); labels
    the group's index 0..n_groups-1 in the context; groups the prompt's index. chat as in `encode_prompts`."""
    if hook not in HOOKS:
        raise MechkitError(f"hook {hook!r} is not a residual-stream hook; use one of {', '.join(HOOKS)}")
    layers = list(range(subject.n_layers)) if layers is None else list(layers)
    outside = [layer for layer in layers if not 0 <= layer < subject.n_layers]
    if not layers or outside:
        raise MechkitError(f"layers {layers} must be a non-empty list within {subject.model_id}'s 0.."
                           f"{subject.n_layers - 1}; pass layer indices in that range")
    if batch_size < 1:
        raise MechkitError(f"batch_size must be at least 1, got {batch_size}")
    encoded, positions = entity_positions(subject, prompts, role, chat)
    names = [f"blocks.{layer}.hook_{hook}" for layer in layers]
    n_prompts, n_groups = positions.shape
    chunks = []
    for start in tqdm(range(0, n_prompts, batch_size), desc="binding-ID features", disable=not verbose):
        rows = list(range(start, min(start + batch_size, n_prompts)))
        batch = encoded.batch.select(rows)
        columns = positions[rows] - (encoded.batch.tokens.shape[1] - batch.tokens.shape[1])  # select trims padding
        _, cache = subject.run_with_cache(batch, names_filter=names, last_only=True)
        index = torch.arange(len(rows))[:, None]
        picked = [cache[name][index.to(cache[name].device), columns.to(cache[name].device)] for name in names]
        chunks.append(torch.stack(picked, dim=2).float().cpu())
    features = torch.cat(chunks).flatten(0, 1)
    labels = torch.arange(n_groups).repeat(n_prompts)
    groups = torch.arange(n_prompts).repeat_interleave(n_groups)
    return features, labels, groups


def default_role(task: str | BindingSchema) -> str:
    """The role a binding-ID probe reads by default: the first role (schema order) named by the default query's
    question, i.e. the entity the model must look up to find the queried group ("object" for boxes)."""
    schema = get_task(task)
    asked = {field for _, field, _, _ in string.Formatter().parse(schema.query().question) if field}
    return next(role for role in schema.roles if role in asked)


def binding_id_probe(
    subject: Subject,
    task: str | BindingSchema,
    n_groups: int,
    n_prompts: int,
    role: str | None = None,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
    n_folds: int = 5,
    chat: bool | None = None,
    batch_size: int = 8,
    verbose: bool = True,
    **probe_kwargs,
) -> ProbeResult:
    """Decode each group's index from its `role` entity's residual stream (`binding_id_features`), per layer,
    with whole prompts per fold; `probe_kwargs` (control, C, max_iter) go to `probe_layers`. role None:
    `default_role(task)`. `make_prompts` and the probe share `seed`; chance is 1 / n_groups."""
    schema = get_task(task)
    role = default_role(schema) if role is None else role
    _check_role(schema, role)
    if n_prompts < n_folds:
        raise MechkitError(f"n_prompts={n_prompts} is fewer than n_folds={n_folds}, and each fold needs whole "
                           "prompts; use more prompts or fewer folds")
    prompts = make_prompts(schema, n_groups, n_prompts, seed)
    features, labels, groups = binding_id_features(subject, prompts, role, layers, hook, chat, batch_size, verbose)
    names = list(range(subject.n_layers)) if layers is None else list(layers)
    return probe_layers(features, labels, groups, n_folds, seed, layers=names, verbose=verbose, **probe_kwargs)
