"""NativeSubject: attention rows (softmax and implied), probes unchanged, decoding, interventions, load round trip."""

from __future__ import annotations

import json

import pytest
import torch

import mechkit
from mechkit.backends.native import NativeSubject
from mechkit.batch import Batch
from mechkit.errors import MechkitError, UnknownModelError
from mechkit.interventions import HeadAblation, UniformAttention
from mechkit.kernels.implied import normalized_abs
from mechkit.native import NativeConfig, NativeModel, save_checkpoint
from mechkit.probes.induction import InductionConfig, find_induction_heads
from mechkit.probes.ngram import NgramConfig, find_ngram_heads
from mechkit.subject import Subject
from mechkit.tasks import regbench


def subject(mixers=("softmax", "delta_net"), **kwargs) -> NativeSubject:
    settings = dict(vocab_size=48, d_model=32, n_heads=2, d_head=16, chunk_size=8, context_length=96)
    model = NativeModel(NativeConfig(mixers=mixers, **{**settings, **kwargs}))
    return NativeSubject(model, model_id="native:test")


def pattern(sub: NativeSubject, batch, layer: int) -> torch.Tensor:
    _, cache = sub.run_with_cache(batch, f"blocks.{layer}.attn.hook_pattern")
    return cache[f"blocks.{layer}.attn.hook_pattern"]


BATCH = Batch(torch.randint(0, 48, (2, 21), generator=torch.Generator().manual_seed(0)),
              torch.ones(2, 21, dtype=torch.long))


@pytest.mark.parametrize("mixer", ["softmax", "sliding_window"])
def test_softmax_rows_equal_hook_pattern(mixer):
    sub = subject((mixer, "delta_net"), window=6)
    torch.testing.assert_close(sub.attention_rows(BATCH, 0, torch.arange(21)), pattern(sub, BATCH, 0))


@pytest.mark.parametrize("mixer", ["linear", "based", "delta_net", "gated_delta_net", "kaczmarz"])
def test_recurrent_rows_are_the_normalized_implied_attention(mixer):
    sub = subject(("softmax", mixer))
    rows = sub.attention_rows(BATCH, 1, torch.arange(21))
    torch.testing.assert_close(rows, normalized_abs(pattern(sub, BATCH, 1)))
    assert torch.allclose(rows.sum(-1), torch.ones(2, 2, 21), atol=1e-5)


def test_rows_of_a_padded_batch_equal_unpadded_rows():
    sub = subject(("gated_delta_net", "softmax"))
    batch = Batch.from_sequences([list(range(1, 15)), list(range(5, 14))], pad_id=0)
    for layer in (0, 1):
        rows = sub.attention_rows(batch, layer, torch.arange(14))
        alone = sub.attention_rows(torch.arange(5, 14), layer, torch.arange(9))
        torch.testing.assert_close(rows[1:, :, 5:, 5:], alone, atol=1e-5, rtol=1e-4)
        assert rows[1, :, 5:, :5].abs().max() == 0


def test_head_results_sum_to_the_attention_output():
    sub = subject()
    _, cache = sub.run_with_cache(BATCH, "blocks.1.hook_attn_out")
    torch.testing.assert_close(sub.head_results(BATCH, 1).sum(2), cache["blocks.1.hook_attn_out"], atol=1e-5,
                               rtol=1e-4)


def test_probes_run_unchanged():
    sub = subject()
    result = find_induction_heads(sub, InductionConfig(seq_len=12, n_sequences=2, prefix_len=6), verbose=False)
    for scores in result.scores.values():
        assert scores.scores.shape == (2, 2) and torch.isfinite(scores.scores).all()
    words = subject(("based", "softmax"), vocab_size=len(regbench.VOCAB), token_names=regbench.VOCAB)
    ngram = find_ngram_heads(words, NgramConfig(n_sequences=2, max_tokens=60), verbose=False)
    assert ngram.scores["ngram_1"].scores.shape == (2, 2)


def test_interventions_run():
    sub = subject()
    losses = sub.token_losses(BATCH, [HeadAblation("L1H0"), UniformAttention("L0H1")])
    assert losses.shape == (2, 20) and torch.isfinite(losses).all()


@pytest.mark.parametrize("mixers", [("softmax", "softmax"), ("softmax", "kaczmarz")])
def test_greedy_decode_matches_full_reruns(mixers):
    sub = subject(mixers)
    batch = Batch.from_sequences([[3, 4, 5, 6, 7], [8, 9, 10]], pad_id=0)
    decoded = sub.greedy_decode(batch, 6)
    running = batch
    for step in range(6):
        chosen = sub.run_with_hooks(running, last_only=True)[:, -1].argmax(-1)
        assert torch.equal(chosen, decoded.new_tokens[:, step])
        running = Batch(torch.cat([running.tokens, chosen[:, None]], 1),
                        torch.cat([running.attention_mask, torch.ones(2, 1, dtype=torch.long)], 1))
    if "kaczmarz" not in mixers:  # the stock cached decoder tracks heads from hook_rot_q/k of softmax layers
        assert torch.equal(decoded.argmax, Subject.greedy_decode(sub, batch, 6).argmax)
    assert decoded.argmax.shape == (6, 2, 2, 2) and (decoded.argmax >= 0).all()


def test_tokenizer_reads_and_writes_words():
    sub = subject()
    batch = sub.tokenize(["1 2 3", "47"])
    assert batch.tokens.tolist() == [[1, 2, 3], [0, 0, 47]] and sub.tokenizer.decode([4, 5]) == "4 5"
    with pytest.raises(MechkitError, match="unknown token words"):
        sub.tokenize("48")


def test_load_round_trip(tmp_path):
    model = NativeModel(NativeConfig(vocab_size=48, mixers=("softmax", "based"), d_model=32, d_head=32))
    save_checkpoint(model, tmp_path / "run")
    loaded = mechkit.load(f"native:{tmp_path / 'run'}")
    assert loaded.backend == "native" and len(loaded.weights_sha256) == 64
    x = BATCH.tokens
    torch.testing.assert_close(loaded.run_with_hooks(x), model(x))


def test_checkpoint_whose_config_does_not_match_is_refused(tmp_path):
    model = NativeModel(NativeConfig(vocab_size=48, mixers=("linear",), d_model=32, d_head=32))
    save_checkpoint(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["d_head"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MechkitError, match="do not match its config.json"):
        mechkit.load(f"native:{tmp_path}")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(MechkitError, match="not a native checkpoint"):
        mechkit.load(f"native:{tmp_path}")


def test_unknown_native_model_and_backend():
    with pytest.raises(UnknownModelError, match="mqar-softmax"):
        mechkit.load("native:nope")
    with pytest.raises(MechkitError, match="backend='auto'"):
        mechkit.load("native:mqar-softmax", backend="tl")
    with pytest.raises(MechkitError, match="cached decoding|context"):
        subject().greedy_decode(torch.arange(90), 10)
