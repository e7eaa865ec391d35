"""A hand-built induction model whose circuit is known by construction, plus its positive / negative examples.

Task: "<bos> x1 ... A B ... xk A" -> B over the letters a-p (byte tokens), every letter distinct except the final
repeat of an earlier A. Negative = the same sequence with the final A replaced by a letter that does not occur in
it, so the repeat is broken and B is no longer predictable (a minimal, same-length edit).

Model: 2 attention-only layers, 4 heads each, residual stream of one-hot blocks
`[token (16 letters) | bos | position | pointer | junk]`; attention is made hard by a large logit scale, and every
head that finds nothing to attend to falls back on <bos>, whose value is zero.

- L0H1, duplicate-token head: attends from each token to an earlier occurrence of the same token (never to
  itself) and writes that occurrence's position + 1 (times `SCALE`) into the pointer block.
- L1H2, pointer head (Q-composition with L0H1): attends to the position the pointer names and copies its token,
  scaled by `SCALE`, into the token block, which the unembedding reads.
- The other six heads are distractors with random weights (a local generator): they read token, position and
  (in L1) junk, and write only into the junk block, which the unembedding reads weakly (`JUNK_UNEMBED`).

So on positives the circuit {L0H1, L1H2} puts logit `SCALE` on B; on negatives both heads write zero.
Test modules import the fixtures `toy` (the Subject) and `toy_examples` (24 pairs of lengths 10 and 12).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import GPT2Config

from mechkit.backends.tl import TLSubject
from mechkit.circuits.examples import CircuitExamples
from mechkit.models.tiny import byte_tokenizer

LETTERS = "abcdefghijklmnop"
N_CTX = 16
N_HEADS = 4
D_HEAD = 40
N_JUNK = 8
HARD = 1e3  # attention logit of a match: softmax is one-hot
SCALE = 20.0  # size of the circuit heads' writes: the pointer, and the answer's logit
JUNK_UNEMBED = 0.02  # std of the unembedding of the junk block (the distractors' only way to the logits)
TRUE_HEADS = ["L0H1", "L1H2"]

TOK = slice(0, 16)
BOS = 16
POS = slice(17, 17 + N_CTX)
PTR = slice(17 + N_CTX, 17 + 2 * N_CTX)
JUNK = slice(17 + 2 * N_CTX, 17 + 2 * N_CTX + N_JUNK)
D_MODEL = 17 + 2 * N_CTX + N_JUNK


def letter_ids() -> list[int]:
    """Token ids of the letters a-p, in order."""
    tokenizer = byte_tokenizer()
    return [tokenizer.convert_tokens_to_ids(c) for c in LETTERS]


def induction_subject(seed: int = 0) -> TLSubject:
    """The toy model as a Subject; `seed` draws the distractors' weights."""
    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    ids = letter_ids()
    cfg = HookedTransformerConfig(n_layers=2, d_model=D_MODEL, n_ctx=N_CTX, d_head=D_HEAD, n_heads=N_HEADS,
                                  d_vocab=vocab, attn_only=True, normalization_type=None, act_fn="relu",
                                  positional_embedding_type="standard", use_attn_scale=False,
                                  default_prepend_bos=False, dtype=torch.float32)
    model = HookedTransformer(cfg, move_to_device=False)
    params = dict(model.named_parameters())  # buffers (the -inf mask value IGNORE) keep their values
    state = {name: torch.zeros_like(value) if name in params else value for name, value in model.state_dict().items()}
    eye = torch.eye(N_CTX)
    for i, token in enumerate(ids):
        state["embed.W_E"][token, i] = 1.0
        state["unembed.W_U"][i, token] = 1.0
    state["embed.W_E"][tokenizer.bos_token_id, BOS] = 1.0
    state["pos_embed.W_pos"][:, POS] = eye
    g = torch.Generator().manual_seed(seed)
    state["unembed.W_U"][JUNK, ids] = JUNK_UNEMBED * torch.randn(N_JUNK, len(ids), generator=g)

    def sink(prefix: str, head: int) -> None:  # <bos> scores HARD / 2 from every query (dimension D_HEAD - 1)
        state[prefix + "b_Q"][head, D_HEAD - 1] = HARD / 2
        state[prefix + "W_K"][head, BOS, D_HEAD - 1] = 1.0

    # L0H1 duplicate-token head: + HARD for the same token, - HARD for itself; value: position p -> pointer p + 1
    p = "blocks.0.attn."
    state[p + "W_Q"][1, TOK, :16] = HARD * torch.eye(16)
    state[p + "W_K"][1, TOK, :16] = torch.eye(16)
    state[p + "W_Q"][1, POS, 16:16 + N_CTX] = -HARD * eye
    state[p + "W_K"][1, POS, 16:16 + N_CTX] = eye
    sink(p, 1)
    state[p + "W_V"][1, POS, :N_CTX] = eye
    state[p + "W_O"][1, 1:N_CTX - 1, PTR.start + 2:PTR.stop] = SCALE * torch.eye(N_CTX - 2)  # <bos> (position 0): 0
    # L1H2 pointer head: query pointer block matches key position block; value copies the token
    p = "blocks.1.attn."
    state[p + "W_Q"][2, PTR, :N_CTX] = HARD / SCALE * eye
    state[p + "W_K"][2, POS, :N_CTX] = eye
    sink(p, 2)
    state[p + "W_V"][2, TOK, :16] = torch.eye(16)
    state[p + "W_O"][2, :16, TOK] = SCALE * torch.eye(16)
    # distractors: random reads (token + position, and junk in L1), writes into junk only
    for layer, heads in ((0, (0, 2, 3)), (1, (0, 1, 3))):
        p = f"blocks.{layer}.attn."
        reads = [TOK, POS] + ([JUNK] if layer == 1 else [])
        for head in heads:
            for name, std in (("W_Q", 1.0), ("W_K", 1.0), ("W_V", 1.0)):
                for block in reads:
                    rows = block.stop - block.start
                    state[p + name][head, block] = std * torch.randn(rows, D_HEAD, generator=g)
            state[p + "W_O"][head, :, JUNK] = torch.randn(D_HEAD, N_JUNK, generator=g) / D_HEAD ** 0.5
    model.load_state_dict(state)
    config = GPT2Config(n_layer=2, n_head=N_HEADS, n_embd=D_MODEL, n_positions=N_CTX, vocab_size=vocab)
    config.head_dim = D_HEAD
    return TLSubject(model, model_id="toy:induction", config=config, tokenizer=tokenizer, prepend_bos=False,
                     weights_sha256=None)


def induction_examples(n: int = 24, seed: int = 0, lengths: tuple[int, ...] = (10, 12)) -> CircuitExamples:
    """`n` positive / negative pairs; pair i has length `lengths[i % len(lengths)]` (mixed lengths: left padding)."""
    rng = random.Random(seed)
    ids = letter_ids()
    bos = byte_tokenizer().bos_token_id
    positives, negatives, answers, wrongs = [], [], [], []
    for i in range(n):
        length = lengths[i % len(lengths)]
        letters = rng.sample(range(len(ids)), length - 2)  # distinct letters after <bos>, before the repeat
        a = rng.randrange(0, len(letters) - 1)  # the repeated letter has a successor inside the prefix
        unused = [c for c in range(len(ids)) if c not in letters]
        wrong = rng.choice([c for j, c in enumerate(letters) if j not in (a, a + 1)])
        prefix = [bos] + [ids[c] for c in letters]
        positives.append(prefix + [ids[letters[a]]])
        negatives.append(prefix + [ids[rng.choice(unused)]])
        answers.append(ids[letters[a + 1]])
        wrongs.append(ids[wrong])
    return CircuitExamples.from_token_ids("toy-induction", positives, negatives, answers, wrongs)


@pytest.fixture(scope="module")
def toy() -> TLSubject:
    return induction_subject()


@pytest.fixture(scope="module")
def toy_examples() -> CircuitExamples:
    return induction_examples()
