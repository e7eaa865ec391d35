"""Preplan-and-anchor rhythm: hand-computed WAAD / FAI / spans / selections, permutation statistics with known
expectations, streamed == direct on tiny models (and Gemma), batching, seeds, bad input, CLI and dashboard."""

from __future__ import annotations

import csv
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mechkit.cli import app
from mechkit.cli import retrieval as cli_retrieval
from mechkit.errors import MechkitError
from mechkit.heads import HeadId
from mechkit.probes import preplan_anchor as pa
from mechkit.probes.preplan_anchor import (
    RhythmConfig,
    anchor_tokens,
    attention_rhythm,
    fai,
    head_spans,
    measure_responses,
    preplan_tokens,
    split_heads,
    top_quantile,
    waad,
)
from mechkit.probes.preplan_anchor_io import COUPLING_JSON, TOKEN_KEYS, rhythm_dashboard, write_rhythm_outputs
from mechkit.probes.rhythm_coupling import coupling_statistics, follows_within, permutation_test
from mechkit.scores import HeadScores
from mechkit.subject import Subject
from mechkit.tasks.word_problems import KINDS, plain_prompt, word_problems
from mechkit.viz import write_dashboard

NAN = math.nan
# A 5-token sequence whose last 3 tokens (positions 2, 3, 4) are the response: its 3 response rows.
ROWS = torch.tensor([
    [0.2, 0.3, 0.5, 0.0, 0.0],
    [0.1, 0.2, 0.3, 0.4, 0.0],
    [0.4, 0.1, 0.1, 0.1, 0.3],
], dtype=torch.float64)


# -- pure metrics, by hand ---------------------------------------------------------------------------------
def test_waad_by_hand():
    # W = 2: t=2: 0.2·2 + 0.3·1 = 0.7; t=3: 0.1·2 + 0.2·2 + 0.3·1 = 0.9; t=4: (0.4 + 0.1 + 0.1)·2 + 0.1·1 = 1.3
    assert torch.allclose(waad(ROWS, window=2), torch.tensor([0.7, 0.9, 1.3], dtype=torch.float64))
    # W = 1: every earlier key counts 1: 0.5, 0.6, 0.7
    assert torch.allclose(waad(ROWS, window=1), torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64))
    # explicit query positions give the same rows the same t
    assert torch.allclose(waad(ROWS, 2, query_positions=[2, 3, 4]), waad(ROWS, 2))


def test_head_spans_by_hand():
    # unclipped: t=2: 0.7; t=3: 0.3 + 0.4 + 0.3 = 1.0; t=4: 1.6 + 0.3 + 0.2 + 0.1 = 2.2; mean 1.3
    heads = torch.stack([ROWS, torch.eye(5, dtype=torch.float64)[2:]])  # head 1 attends to itself: span 0
    assert torch.allclose(head_spans(heads), torch.tensor([1.3, 0.0], dtype=torch.float64))


def test_fai_by_hand():
    # h_lo=1, h_hi=2 over R = {2, 3, 4}: s=2: T = {3, 4}: (0.3 + 0.1) / 2; s=3: T = {4}: 0.1; s=4: T empty
    got = fai(ROWS, h_lo=1, h_hi=2)
    assert torch.allclose(got[:2], torch.tensor([0.2, 0.1], dtype=torch.float64)) and math.isnan(got[2])
    # h_lo = h_hi = 2: s=2: T = {4}: 0.1; s=3, 4: empty
    got = fai(ROWS, h_lo=2, h_hi=2)
    assert got[0].item() == pytest.approx(0.1) and torch.isnan(got[1:]).all()
    # uniform causal attention over 6 response tokens, A[t, s] = 1/(t+1); h_lo=1, h_hi=2 cuts T(s) at s + 2
    uniform = torch.tril(torch.ones(6, 6, dtype=torch.float64)) / torch.arange(1, 7, dtype=torch.float64)[:, None]
    got = fai(uniform, h_lo=1, h_hi=2)
    expected = [(1 / 2 + 1 / 3) / 2, (1 / 3 + 1 / 4) / 2, (1 / 4 + 1 / 5) / 2, (1 / 5 + 1 / 6) / 2, 1 / 6]
    assert torch.allclose(got[:5], torch.tensor(expected, dtype=torch.float64)) and math.isnan(got[5])


def test_split_heads_on_known_spans():
    spans = torch.tensor([[5.0, 1.0, 9.0], [3.0, 7.0, 2.0], [8.0, 4.0, 6.0], [0.5, 10.0, 11.0]])
    local, glob = split_heads(spans, 0.3)  # 12 heads: floor(3.6) = 3 each
    assert local == [HeadId(0, 1), HeadId(1, 2), HeadId(3, 0)]
    assert glob == [HeadId(0, 2), HeadId(3, 1), HeadId(3, 2)]
    local, glob = split_heads(spans, 0.5)
    assert len(local) == len(glob) == 6 and not set(local) & set(glob)
    local, glob = split_heads(torch.ones(2, 2), 0.5)  # all equal: still disjoint, earlier heads local
    assert local == [HeadId(0, 0), HeadId(0, 1)] and glob == [HeadId(1, 0), HeadId(1, 1)]


def test_top_quantile_and_token_selection():
    values = torch.tensor([0.1, 0.9, NAN, 0.5, 0.9, 0.2])
    assert top_quantile(values, 0.4).tolist() == [False, True, False, False, True, False]  # ceil(0.4 · 5) = 2
    assert top_quantile(values, 0.5).tolist() == [False, True, False, True, True, False]  # ceil(2.5) = 3
    assert top_quantile(torch.ones(5), 0.4).tolist() == [True, True, False, False, False]  # ties: earlier first
    # Δ = |0 − 0.5|, |0.5 − 0.7|, |0.7 − 0.9|, |0.9 − 0.1|, NaN = 0.5, 0.2, 0.2, 0.8: top 2 of 4 are t = 3, 0
    assert preplan_tokens(torch.tensor([0.0, 0.5, 0.7, 0.9, 0.1]), 0.4).tolist() == [True, False, False, True, False]
    assert anchor_tokens(values, 0.4).tolist() == top_quantile(values, 0.4).tolist()


# -- coupling statistics -----------------------------------------------------------------------------------
def test_follows_within_by_hand():
    preplan = np.array([1, 0, 0, 1, 0, 0, 0], dtype=bool)
    assert follows_within(preplan, 1).tolist() == [True, True, False, True, True, False, False]
    assert follows_within(preplan, 2).tolist() == [True, True, True, True, True, True, False]


def test_permutation_test_known_expectation():
    # one 1 among 4 eligible values, one selected: observed 1, shuffled mean 1/4, P(shuffle >= observed) = 1/4
    got = permutation_test([np.array([1.0, 0, 0, 0])], [np.array([1, 0, 0, 0], bool)], [np.ones(4, bool)],
                           n_shuffles=20000, seed=3)
    assert got["observed"] == 1.0 and got["n"] == 1 and got["n_shuffles"] == 20000
    assert got["shuffled_mean"] == pytest.approx(0.25, abs=0.01) and got["p_value"] == pytest.approx(0.25, abs=0.01)
    empty = permutation_test([np.zeros(3)], [np.zeros(3, bool)], [np.ones(3, bool)], 10)
    assert empty["n"] == 0 and math.isnan(empty["observed"])


def test_coupling_statistics_known_answer():
    # 8 tokens; preplan at 1 and 4; anchors at 2 and 5; FAI defined on 0..5; entropy 1 at the preplan tokens.
    response = SimpleNamespace(
        entropy=np.array([0, 1, 0, 0, 1, 0, 0, 0.0]), fai=np.array([0.1] * 6 + [NAN] * 2),
        preplan=np.array([0, 1, 0, 0, 1, 0, 0, 0], bool), anchor=np.array([0, 0, 1, 0, 0, 1, 0, 0], bool))
    stats = {r["statistic"]: r for r in coupling_statistics([response], n_shuffles=20000, seed=0)}
    assert list(stats) == ["entropy_at_preplan", "entropy_at_anchor", "anchor_after_preplan_k1",
                           "anchor_after_preplan_k2", "anchor_after_preplan_k3"]
    # entropy at preplan: 1 observed; shuffled: 2 of the 7 positions 0..6 (the last has no Δ), mean 2/7,
    # p = P(both ones drawn) = 1 / C(7, 2)
    e = stats["entropy_at_preplan"]
    assert e["observed"] == 1.0 and e["shuffled_mean"] == pytest.approx(2 / 7, abs=0.01)
    assert e["p_value"] == pytest.approx(1 / 21, abs=0.01)
    # anchors after a preplan within 1: both; 4 of the 6 eligible positions (1, 2, 4, 5) are covered:
    # shuffled mean 4/6, p = C(4, 2) / C(6, 2) = 0.4
    k1 = stats["anchor_after_preplan_k1"]
    assert k1["observed"] == 1.0 and k1["n"] == 2
    assert k1["shuffled_mean"] == pytest.approx(2 / 3, abs=0.01) and k1["p_value"] == pytest.approx(0.4, abs=0.015)
    assert stats["entropy_at_anchor"]["observed"] == 0.0
    assert coupling_statistics([response], 500, 7) == coupling_statistics([response], 500, 7)


# -- streamed over a Subject == direct on the full patterns --------------------------------------------------
def _pairs(subject):
    texts = [("Question: Ann has 3 apples. How many?", " She has 3 apples, so the answer is 3 apples today."),
             ("Question: 2 + 5?", " Two plus five is seven; the answer is 7, of course, said Bob.")]
    return ([subject.tokenize(p).tokens[0].tolist() for p, _ in texts],
            [subject.tokenize(r, prepend_bos=False).tokens[0].tolist() for _, r in texts])


def _full_patterns(subject, sequence):
    """[layer, head, T, T] from the model itself: TransformerLens' hook_pattern, or Hugging Face eager attention."""
    if subject.backend == "tl":
        _, cache = subject.run_with_cache(sequence, names_filter=lambda name: name.endswith("hook_pattern"))
        return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(subject.n_layers)])
    hf = subject.hf_model
    implementation = hf.config._attn_implementation
    hf.set_attn_implementation("eager")  # attention probabilities are only returned by the eager path
    try:
        with torch.no_grad():
            attentions = hf(sequence[None], output_attentions=True).attentions
    finally:
        hf.set_attn_implementation(implementation)
    return torch.stack([a[0] for a in attentions])


def _direct(subject, prompts, responses, config):
    """The definitions on the model's full patterns of each sequence (all layers, every row), as a reference."""
    patterns, span_sum, n_rows = [], 0.0, 0
    for prompt, response in zip(prompts, responses):
        response_rows = _full_patterns(subject, torch.tensor(prompt + response))[:, :, -len(response):]
        span_sum = span_sum + head_spans(response_rows) * len(response)
        n_rows += len(response)
        patterns.append(response_rows)
    spans = span_sum / n_rows
    local, glob = split_heads(spans, config.head_fraction)
    out = []
    for (prompt, response), rows in zip(zip(prompts, responses), patterns):
        mean_local = torch.stack([rows[h.layer, h.head] for h in local]).mean(0)
        mean_global = torch.stack([rows[h.layer, h.head] for h in glob]).mean(0)
        logits = subject.run_with_hooks(torch.tensor(prompt + response))[0, -len(response):]
        out.append((waad(mean_local, config.window), fai(mean_global, config.h_lo, config.h_hi),
                    pa.next_token_entropy(logits)))
    return spans, local, glob, out


CONFIG = RhythmConfig(max_new_tokens=40, window=5, h_lo=3, h_hi=12, n_shuffles=50, shots=0)


@pytest.mark.parametrize("fixture", ["tiny_tl", "tiny_gemma"])
def test_streamed_equals_direct(fixture, request):
    """tiny:gemma3 has a 4-token sliding window on layers 0 and 2; both sequences share one padded batch."""
    subject = request.getfixturevalue(fixture)
    prompts, responses = _pairs(subject)
    result = measure_responses(subject, prompts, responses, CONFIG, batch_size=2, block_size=7, verbose=False)
    spans, local, glob, direct = _direct(subject, prompts, responses, CONFIG)
    assert torch.allclose(result.spans.scores, spans.double(), atol=1e-5)
    assert (result.local_heads, result.global_heads) == (local, glob)
    for got, (w, f, e) in zip(result.responses, direct):
        assert torch.allclose(got.waad, w.double(), atol=1e-5)
        assert torch.allclose(got.fai, f.double(), atol=1e-6, equal_nan=True)
        assert torch.isnan(got.fai[-CONFIG.h_lo:]).all() and not torch.isnan(got.fai[:-CONFIG.h_lo]).any()
        assert torch.allclose(got.entropy, e.double(), atol=1e-4)
        assert got.preplan.sum() == math.ceil(0.4 * (len(got.tokens) - 1) - 1e-9)


@pytest.mark.parametrize("fixture", ["tiny_tl", "tiny_nnsight", "tiny_gemma"])
def test_batched_equals_unbatched(fixture, request):
    subject = request.getfixturevalue(fixture)
    prompts, responses = _pairs(subject)
    one = measure_responses(subject, prompts, responses, CONFIG, batch_size=1, verbose=False)
    two = measure_responses(subject, prompts, responses, CONFIG, batch_size=2, verbose=False)
    assert torch.allclose(one.spans.scores, two.spans.scores, atol=1e-6)
    for a, b in zip(one.responses, two.responses):
        for name in ("waad", "fai", "entropy"):
            assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5, equal_nan=True), name
        assert torch.equal(a.preplan, b.preplan) and torch.equal(a.anchor, b.anchor)


def test_attention_rhythm_is_deterministic_under_a_seed(tiny_tl):
    config = RhythmConfig(n_problems=3, max_new_tokens=24, window=4, h_lo=4, h_hi=12, n_shuffles=100, shots=0)
    first = attention_rhythm(tiny_tl, config, batch_size=3, verbose=False)
    again = attention_rhythm(tiny_tl, config, batch_size=1, verbose=False)
    assert [r.response_ids for r in first.responses] == [r.response_ids for r in again.responses]
    assert [r.problem for r in first.responses] == word_problems(3, 0)
    assert [r["statistic"] for r in first.coupling] == [r["statistic"] for r in again.coupling]
    for a, b in zip(first.coupling, again.coupling):
        assert a["observed"] == pytest.approx(b["observed"], abs=1e-6) and a["n"] == b["n"]
    assert word_problems(3, 1) != word_problems(3, 0)


def test_word_problems():
    problems = word_problems(10, seed=4)
    assert problems == word_problems(10, seed=4) and [p.kind for p in problems] == list(KINDS) * 2
    assert all(p.answer >= 0 and p.question.endswith("?") for p in problems)
    share = problems[2]  # "... has {a·b} ... among {b} friends": the answer divides the total exactly
    total, friends = (int(n) for n in re.findall(r"\d+", share.question))
    assert total == share.answer * friends
    assert plain_prompt("Q?", 0) == "Question: Q?\nAnswer: Let's think step by step."
    assert plain_prompt("Q?", 1).count("Question:") == 2


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, fragment", [
    ({"window": 16, "max_new_tokens": 16}, "window 16"),
    ({"h_lo": 20, "h_hi": 30, "max_new_tokens": 16}, "h_lo 20"),
    ({"q": 0.0}, "quantile q 0.0"),
    ({"q": 1.0}, "quantile q 1.0"),
    ({"head_fraction": 0.0}, "head fraction 0.0"),
    ({"head_fraction": 0.6}, "head fraction 0.6"),
    ({"h_lo": 20, "h_hi": 10}, "h_lo 20 is larger than h_hi 10"),
    ({"n_problems": 0}, "n_problems 0"),
    ({"shots": 3}, "shots 3"),
], ids=["window", "h_lo", "q0", "q1", "fraction0", "fraction-big", "band", "problems", "shots"])
def test_bad_config_is_refused(kwargs, fragment):
    with pytest.raises(MechkitError, match=re.escape(fragment)):
        RhythmConfig(**kwargs)


def test_short_response_is_refused_before_any_forward(tiny_tl, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("attention rows were computed before the input was checked")

    monkeypatch.setattr(Subject, "iter_attention_blocks", refuse)
    with pytest.raises(MechkitError, match="response 1 has 5 tokens"):
        measure_responses(tiny_tl, [[1, 40], [1, 41]], [list(range(3, 20)), [5, 6, 7, 8, 9]], CONFIG)


# -- CLI, dashboard ----------------------------------------------------------------------------------------
TINY_ARGS = ["-m", "tiny:llama", "--problems", "2", "--max-new-tokens", "30", "--window", "5", "--h-lo", "4",
             "--h-hi", "20", "--shuffles", "50", "--shots", "0", "--quiet"]


def test_cli_writes_every_file(tmp_path):
    out = tmp_path / "rhythm"
    result = CliRunner().invoke(app, ["attention-rhythm", *TINY_ARGS, "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "entropy_at_preplan" in result.stdout and "anchor_after_preplan_k3" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["coupling.json", "dashboard.html", "spans.csv", "spans.json",
                                                    "tokens.csv"]
    spans = HeadScores.from_json(out / "spans.json")
    assert spans.metric == "attention_span" and spans.scores.shape == (3, 4) and not spans.scores.isnan().any()
    coupling = json.loads((out / COUPLING_JSON).read_text())
    assert coupling["model"] == "tiny:llama" and coupling["config"]["window"] == 5
    assert len(coupling["records"]) == 5 and len(coupling["local_heads"]) == 3 and len(coupling["problems"]) == 2
    with (out / "tokens.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TOKEN_KEYS and len(rows) == sum(p["n_tokens"] for p in coupling["problems"])
    assert all(math.isfinite(float(r["waad"])) and math.isfinite(float(r["entropy"])) for r in rows)
    assert sum(int(r["is_anchor"]) for r in rows) > 0 and sum(int(r["is_preplan"]) for r in rows) > 0
    assert "Preplan-and-anchor rhythm: tiny:llama" in (out / "dashboard.html").read_text()


@pytest.mark.parametrize("args, fragment", [
    (["--quantile", "1.5"], "quantile q 1.5"),
    (["--head-fraction", "0.7"], "head fraction 0.7"),
    (["--h-lo", "50", "--h-hi", "20"], "h_lo 50 is larger than h_hi 20"),
    (["--window", "30"], "window 30"),
    (["--problems", "0"], "n_problems 0"),
    (["--backend", "jax"], "--backend 'jax'"),
], ids=["quantile", "fraction", "band", "window", "problems", "backend"])
def test_cli_refuses_bad_input_before_loading(tmp_path, monkeypatch, args, fragment):
    monkeypatch.setattr(cli_retrieval, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    result = CliRunner().invoke(app, ["attention-rhythm", *TINY_ARGS, "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and "mechkit: error: " in result.stderr and fragment in result.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def _synthetic_result():
    tokens = [" Tom", " has", " <b>3</b>", " apples", "\n", " so", " 3", " *", " 4", " =", " 12"]
    n = len(tokens)
    waad_values = torch.linspace(0.5, 3.0, n, dtype=torch.float64)
    fai_values = torch.tensor([0.3, 0.1, 0.2, 0.05, 0.15, 0.1, 0.12, 0.04, NAN, NAN, NAN], dtype=torch.float64)
    entropy = torch.ones(n, dtype=torch.float64)
    responses = [pa.ResponseRhythm(i, [1], list(range(n)), "".join(tokens), tokens, waad_values + i, fai_values,
                                   entropy, preplan_tokens(waad_values), anchor_tokens(fai_values))
                 for i in range(2)]
    spans = HeadScores(torch.tensor([[1.0, 20.0], [5.0, 30.0]]), metric="attention_span", model="tiny", n_items=2)
    coupling = coupling_statistics(responses, n_shuffles=20, seed=0)
    return pa.RhythmResult(spans, [HeadId(0, 0)], [HeadId(1, 1)], responses, coupling)


@pytest.mark.browser
def test_rhythm_dashboard_renders_and_hover_shows_the_token(tmp_path, browser_page):
    result = _synthetic_result()
    path = write_dashboard(tmp_path / "dashboard.html", rhythm_dashboard(result, {"model": "tiny"}))
    browser_page.open(path)
    page = browser_page.page
    assert page.locator(".plotly-graph-div").count() == 3  # timeline, span heatmap, coupling table
    assert page.locator(".plotly-graph-div").nth(0).locator(".scatterlayer .trace").count() >= 4
    assert page.locator(".updatemenu-container").count() == 1  # the problem dropdown
    assert "entropy_at_preplan" in page.inner_text("p.notes")

    def hover_point(axis: str, x: int, y: float) -> str:
        pixel = page.evaluate("""([axis, x, y]) => {
            const gd = document.querySelectorAll('.plotly-graph-div')[0];
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout[axis], box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(y)];
        }""", [axis, x, y])
        page.mouse.move(pixel[0] - 4, pixel[1] - 4)
        page.mouse.move(pixel[0], pixel[1], steps=3)
        page.wait_for_timeout(300)
        return " ".join(page.locator(".hoverlayer .hovertext").all_text_contents())

    text = hover_point("yaxis", 3, float(result.responses[0].waad[3]))
    assert 'token 3: " apples"' in text and "WAAD" in text, text
    text = hover_point("yaxis2", 2, 0.2)  # FAI of the token " <b>3</b>": shown as text, not as markup
    assert 'token 2: " <b>3</b>"' in text and "FAI" in text, text
    page.locator(".plotly-graph-div").nth(1).scroll_into_view_if_needed()
    assert re.fullmatch(r"L1H1\s*attention_span: 30", browser_page.hover_text(1, 1, 1))
    assert browser_page.errors == [] and browser_page.failed == []
    assert browser_page.requested == [path.as_uri()]


def test_write_rhythm_outputs_from_a_result(tmp_path, tiny_tl):
    prompts, responses = _pairs(tiny_tl)
    result = measure_responses(tiny_tl, prompts, responses, CONFIG, verbose=False)
    paths = write_rhythm_outputs(tmp_path, result, tiny_tl, CONFIG)
    assert [p.name for p in paths] == ["spans.json", "spans.csv", "tokens.csv", "coupling.json", "dashboard.html"]
    assert json.loads((tmp_path / COUPLING_JSON).read_text())["problems"][0]["question"] is None


# -- real model --------------------------------------------------------------------------------------------
@pytest.mark.real
def test_gemma_runs_and_streamed_equals_direct(gemma_nnsight):
    config = RhythmConfig(n_problems=1, max_new_tokens=40, h_hi=30, n_shuffles=200)
    result = attention_rhythm(gemma_nnsight, config, verbose=False)
    (response,) = result.responses
    assert len(response.tokens) == 40 and not result.skipped  # the base model does not stop this early
    assert not result.spans.scores.isnan().any() and len(result.local_heads) == len(result.global_heads) == 21
    assert torch.isfinite(response.waad).all() and torch.isfinite(response.entropy).all()
    assert torch.isfinite(response.fai[:-config.h_lo]).all()
    assert all(math.isfinite(r["observed"]) and 0 <= r["p_value"] <= 1 for r in result.coupling)
    spans, local, glob, [(w, f, e)] = _direct(gemma_nnsight, [response.prompt_ids], [response.response_ids], config)
    assert torch.allclose(result.spans.scores, spans.double(), rtol=1e-4)
    assert (result.local_heads, result.global_heads) == (local, glob)
    assert torch.allclose(response.waad, w.double(), atol=1e-4)
    assert torch.allclose(response.fai, f.double(), atol=1e-5, equal_nan=True)
    assert torch.allclose(response.entropy, e.double(), atol=1e-3)
