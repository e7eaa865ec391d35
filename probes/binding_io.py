"""A whole binding analysis and its files: task accuracy per number of groups and position, interchange
interventions at every layer, the causal mixing model fitted at one layer, and a binding-ID linear probe.

`analyse_binding` runs it (what `mechkit find-binding` and notebooks call); `write_binding_outputs` writes
accuracy.csv, mechanisms.csv, mixing.json, probe.csv, summary.json (provenance header + headline numbers) and
dashboard.html, each atomically.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from mechkit.errors import MechkitError
from mechkit.probes.binding import TaskAccuracy, task_accuracy
from mechkit.probes.binding_mechanisms import MECHANISMS, InterchangeResult, interchange, query_roles
from mechkit.probes.binding_mixing import MixingFit, cell_targets, fit_mixing_model
from mechkit.probes.linear import ProbeResult, binding_id_probe, default_role
from mechkit.results import ensure_writable_dir, provenance, write_records_csv, write_records_json
from mechkit.subject import Subject
from mechkit.tasks.binding import BindingSchema, get_task
from mechkit.viz import dashboard_html, write_dashboard
from mechkit.viz.binding import (
    accuracy_figure,
    mechanism_grid,
    mechanism_layers_figure,
    mechanism_positions_figure,
    mixing_fit_figure,
    probe_figure,
)

ACCURACY_CSV, MECHANISMS_CSV, MIXING_JSON, PROBE_CSV, SUMMARY_JSON, DASHBOARD = (
    "accuracy.csv", "mechanisms.csv", "mixing.json", "probe.csv", "summary.json", "dashboard.html")
ACCURACY_KEYS = ("model", "task", "query", "n_groups", "query_position", "accuracy", "chance", "n_prompts", "seed")
MECHANISM_KEYS = ("model", "task", "query", "n_groups", "layer", "query_position", "mechanism", "share", "n_pairs",
                  "seed")
PROBE_KEYS = ("layer", "metric", "score", "std", "chance", "n_items", "n_classes", "n_folds", "seed")


@dataclass(frozen=True)
class BindingConfig:
    """What `analyse_binding` runs. accuracy_groups None: 2..n_groups. mixing_layer None: the layer with the
    largest positional share. probe_prompts 0 skips the probe; probe_role None: `default_role(task)`.
    only_correct: shares and the mixing model count only the pairs whose original and counterfactual the model
    answers correctly unpatched (as in the paper)."""

    task: str | BindingSchema = "boxes"
    query: str | None = None
    n_groups: int = 5
    n_pairs: int = 100
    accuracy_groups: tuple[int, ...] | None = None
    accuracy_prompts: int = 40
    layers: tuple[int, ...] | None = None
    mixing_layer: int | None = None
    probe_prompts: int = 40
    probe_role: str | None = None
    only_correct: bool = True
    seed: int = 0
    chat: bool | None = None
    batch_size: int = 8

    def schema(self) -> BindingSchema:
        return get_task(self.task)

    def check(self) -> None:
        """Everything that can be checked without a model (names, counts); raises MechkitError."""
        schema = self.schema()
        schema.query(self.query)  # raises for an unknown query name
        if not 4 <= self.n_groups <= schema.max_groups():
            raise MechkitError(f"--groups {self.n_groups} is outside 4..{schema.max_groups()} for binding task "
                               f"{schema.name!r}: interchange interventions need at least 4 groups, and each group "
                               "its own entities")
        for n in self.groups_for_accuracy():
            if not 2 <= n <= schema.max_groups():
                raise MechkitError(f"accuracy group count {n} is outside 2..{schema.max_groups()} for binding task "
                                   f"{schema.name!r}; use fewer groups")
        if min(self.n_pairs, self.accuracy_prompts, self.batch_size) < 1 or self.probe_prompts < 0:
            raise MechkitError("pairs, accuracy prompts and batch size must be at least 1, probe prompts at least 0")
        if 0 < self.probe_prompts < 5:
            raise MechkitError(f"probe prompts {self.probe_prompts} are fewer than the probe's 5 folds (whole prompts "
                               "per fold); use at least 5, or 0 to skip the probe")
        if self.probe_role is not None and self.probe_role not in schema.roles:
            raise MechkitError(f"probe role {self.probe_role!r} is not a role of binding task {schema.name!r}; use "
                               f"one of {', '.join(schema.roles)}")
        if self.mixing_layer is not None and self.layers is not None and self.mixing_layer not in self.layers:
            raise MechkitError(f"mixing layer {self.mixing_layer} is not among the patched layers {list(self.layers)}")

    def groups_for_accuracy(self) -> tuple[int, ...]:
        return tuple(range(2, self.n_groups + 1)) if self.accuracy_groups is None else tuple(self.accuracy_groups)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class MixingAtLayer:
    """The mixing model fitted at `layer`: its (p, k, i) cells [cell, 3], their mean answer distributions
    [cell, n_groups] (pairs answered correctly unpatched) and the fit."""

    layer: int
    cells: Tensor
    targets: Tensor
    fit: MixingFit

    def held_out(self) -> tuple[Tensor, Tensor]:
        """(observed, predicted) answer distributions of the test cells."""
        test = self.fit.test_idx
        return self.targets[test], self.fit.predict(self.cells[test])


@dataclass
class BindingAnalysis:
    """The parts of one analysis; `mixing` is None when the pairs fill too few (p, k, i) cells to fit it."""

    accuracy: TaskAccuracy
    interchange: InterchangeResult
    mixing_layer: int
    mixing: MixingAtLayer | None
    probe: ProbeResult | None
    only_correct: bool = True
    warnings: list[str] = field(default_factory=list)


def analyse_binding(subject: Subject, config: BindingConfig, verbose: bool = True) -> BindingAnalysis:
    """Task accuracy, interchange interventions, the mixing model at one layer and the binding-ID probe."""
    config.check()
    layers = list(range(subject.n_layers)) if config.layers is None else list(config.layers)
    if any(not 0 <= layer < subject.n_layers for layer in layers):
        raise MechkitError(f"layers {layers} must lie within {subject.model_id}'s 0..{subject.n_layers - 1}")
    if config.mixing_layer is not None and config.mixing_layer not in layers:
        raise MechkitError(f"mixing layer {config.mixing_layer} is not among the patched layers of "
                           f"{subject.model_id} (0..{subject.n_layers - 1} unless --layers says otherwise)")
    schema = config.schema()
    accuracy = task_accuracy(subject, schema, list(config.groups_for_accuracy()), config.accuracy_prompts,
                             config.seed, config.query, config.chat, config.batch_size, verbose)
    warnings = []
    run = accuracy.runs.get(config.n_groups)
    if run is not None and run.accuracy < 2 * run.chance:
        warnings.append(f"{subject.model_id} answers {run.accuracy:.2f} of the {config.n_groups}-group prompts "
                        f"(chance {run.chance:.2f}): a model that cannot bind has no binding mechanism to find")
    result = interchange(subject, schema, config.n_groups, config.n_pairs, layers, config.seed, config.query,
                         config.chat, config.batch_size, verbose)
    if config.only_correct and not result.clean_correct.any():
        raise MechkitError(f"{subject.model_id} answers none of the {config.n_pairs} interchange pairs correctly, so "
                           "no outcome can be classified; use fewer groups, a model that solves the task, or "
                           "count all pairs (--all-pairs)")
    positional = result.shares(config.only_correct)[:, MECHANISMS.index("positional")]
    mixing_layer = layers[int(positional.argmax())] if config.mixing_layer is None else config.mixing_layer
    mixing = _fit_mixing(result, mixing_layer, config, verbose, warnings)
    probe = None
    if config.probe_prompts:
        probe = binding_id_probe(subject, schema, config.n_groups, config.probe_prompts, config.probe_role,
                                 config.seed, layers, chat=config.chat, batch_size=config.batch_size,
                                 verbose=verbose)
    return BindingAnalysis(accuracy, result, mixing_layer, mixing, probe, config.only_correct, warnings)


def _fit_mixing(result: InterchangeResult, layer: int, config: BindingConfig, verbose: bool, warnings: list[str]):
    keep = result.counted(config.only_correct)
    targets = result.targets[keep]
    probs = result.answer_probs(layer)[keep]
    cells, means, _ = cell_targets(targets[:, 0], targets[:, 1], targets[:, 2], probs.double())
    try:
        return MixingAtLayer(layer, cells, means, fit_mixing_model(cells, means, result.n_groups, seed=config.seed,
                                                                   verbose=verbose))
    except MechkitError as err:
        warnings.append(f"mixing model not fitted: {err}")
        return None


def summary_lines(analysis: BindingAnalysis) -> list[str]:
    """Headline numbers as lines: accuracy per n, mechanism shares at the mixing layer, agreement, probe."""
    acc = analysis.accuracy
    lines = [f"task accuracy ({acc.task}, {acc.query}): " + ", ".join(
        f"{n} groups {run.accuracy:.2f} (chance {run.chance:.2f})" for n, run in acc.runs.items())]
    result, layer, only = analysis.interchange, analysis.mixing_layer, analysis.only_correct
    kept = int(result.clean_correct.sum())
    shares = result.shares(only)[result.layers.index(layer)]
    counted = "those counted" if only else "all counted"
    lines.append(f"interchange ({result.n_groups} groups, {kept} of {len(result.clean_correct)} pairs answered "
                 f"correctly unpatched, {counted}), layer {layer}: " + ", ".join(
                     f"{name} {float(share):.2f}" for name, share in zip(MECHANISMS, shares)))
    if analysis.mixing is not None:
        fit = analysis.mixing.fit
        lines.append(f"mixing model at layer {layer}: agreement {fit.agreement:.3f} (1 - JSD on {len(fit.test_idx)} "
                     f"held-out cells of {len(analysis.mixing.cells)}), w_pos {fit.params.w_pos:.2f}")
    if analysis.probe is not None:
        probe = analysis.probe
        best = probe.layers.index(probe.best_layer)
        lines.append(f"binding-ID probe: best layer {probe.best_layer} accuracy {probe.accuracy[best]:.3f} vs "
                     f"shuffled-label control {probe.control[best]:.3f} (chance {probe.chance:.3f})")
    return lines + [f"warning: {w}" for w in analysis.warnings]


def binding_dashboard(analysis: BindingAnalysis, header: dict) -> str:
    """The run's page: accuracy, shares by layer, positional share by layer and position, shares by position at the
    mixing layer, the mixing fit, the probe; notes are the summary lines."""
    result, layer, only = analysis.interchange, analysis.mixing_layer, analysis.only_correct
    figures = [
        accuracy_figure(analysis.accuracy, f"Task accuracy by queried position: {result.model}"),
        mechanism_layers_figure(result, f"Interchange outcome by layer ({result.n_groups} groups): {result.model}",
                                only),
        mechanism_grid(result, "positional", only_correct=only),
        mechanism_positions_figure(result, layer, only_correct=only),
    ]
    if analysis.mixing is not None:
        observed, predicted = analysis.mixing.held_out()
        figures.append(mixing_fit_figure(observed, predicted, analysis.mixing.fit.agreement))
    if analysis.probe is not None:
        probe = analysis.probe
        figures.append(probe_figure(probe.layers, probe.accuracy.tolist(), probe.control.tolist(), probe.chance,
                                    "Binding-ID linear probe: group index from the entity's residual stream"))
    return dashboard_html(f"Binding mechanisms: {result.model}", figures, notes="\n".join(summary_lines(analysis)),
                          provenance=header)


def write_binding_outputs(out_dir: str | os.PathLike, analysis: BindingAnalysis, subject: Subject,
                          config: BindingConfig, run_info: dict | None = None) -> list[Path]:
    """accuracy.csv, mechanisms.csv, mixing.json, probe.csv (when run), summary.json and dashboard.html."""
    out = ensure_writable_dir(out_dir)
    recorded = {**config.to_dict(), **(run_info or {"backend": subject.backend}), "mixing_layer": analysis.mixing_layer,
                "query_roles": query_roles(config.schema(), config.query)}
    header = provenance(subject.model_id, subject.weights_sha256, recorded, config.seed)
    paths = [write_records_csv(out / ACCURACY_CSV, analysis.accuracy.records(), ACCURACY_KEYS),
             write_records_csv(out / MECHANISMS_CSV, analysis.interchange.records(analysis.only_correct),
                               MECHANISM_KEYS)]
    if analysis.mixing is not None:
        paths.append(write_records_json(out / MIXING_JSON, {**header, "layer": analysis.mixing_layer},
                                        analysis.mixing.fit.records()))
    if analysis.probe is not None:
        role = config.probe_role or default_role(config.schema())
        paths.append(write_records_csv(out / PROBE_CSV, analysis.probe.records(), PROBE_KEYS))
        header = {**header, "probe_role": role}
    paths.append(write_records_json(out / SUMMARY_JSON, header, [{"line": line} for line in summary_lines(analysis)]))
    paths.append(write_dashboard(out / DASHBOARD, binding_dashboard(analysis, header)))
    return paths
