"""Hand-built attention-only models that bind by one rule only, for known answers of the binding probes.

The task ("toy") writes groups as key letter + value digit ("A3B7C1D5"), asks "\\nA" and reads the value after a
space: prompt "A3B7C1D5\\nA " (byte tokens, so group g's key sits at 2g and its value at 2g + 1). The residual stream
has four one-hot blocks: token, previous token, position, pointer (a position). Attention is made hard by a large
logit scale.

- lexical (2 layers): L0 copies each token into the next position's previous-token block; L1 attends from the last
  token to the positions whose previous token equals its own (the value after the queried key, and itself) and
  copies their tokens to the output. The last token carries the key's identity into L1.
- positional (3 layers): L0 as above; L1 matches the same way but copies the matched position into the pointer
  block; L2 attends to the position named by the pointer and copies its token. The last token carries a position
  into L2.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import GPT2Config

from mechkit.backends.tl import TLSubject
from mechkit.models.tiny import byte_tokenizer
from mechkit.tasks.binding import schema_from_dict

TOY_TASK = schema_from_dict({
    "name": "toy",
    "roles": {"key": list("ABCDEFGH"), "value": list("12345678")},
    "clause": "{key}{value}",
    "separator": "",
    "queries": [{"name": "value_of_key", "question": "{key}", "answer_role": "value"}],
})
N_CTX = 32
HARD = 1e3  # attention logit per matching unit: every softmax is one-hot (or split evenly between exact ties)


def toy_subject(rule: str) -> TLSubject:
    """The toy model implementing `rule` ("lexical" or "positional") as a Subject."""
    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    token, previous, position, pointer = (slice(0, vocab), slice(vocab, 2 * vocab),
                                          slice(2 * vocab, 2 * vocab + N_CTX), slice(2 * vocab + N_CTX, None))
    n_layers = 2 if rule == "lexical" else 3
    d_model, d_head = 2 * vocab + 2 * N_CTX, vocab
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_ctx=N_CTX, d_head=d_head, n_heads=1,
                                  d_vocab=vocab, attn_only=True, normalization_type=None, act_fn="relu",
                                  positional_embedding_type="standard", use_attn_scale=False,
                                  default_prepend_bos=False, dtype=torch.float32)
    model = HookedTransformer(cfg, move_to_device=False)
    state = model.state_dict()  # buffers (the causal mask's fill value) stay as they are; weights start at zero
    state.update({name: torch.zeros_like(value) for name, value in model.named_parameters()})
    state["embed.W_E"][:, token] = torch.eye(vocab)
    state["pos_embed.W_pos"][:, position] = torch.eye(N_CTX)
    state["unembed.W_U"][token, :] = torch.eye(vocab)

    def head(layer: int, query, key, value, out, size_q: int, size_v: int, shift: int = 0):
        """One head: query block `query` matches key block `key` (shifted by `shift` units), value copies block
        `value` into block `out`."""
        prefix = f"blocks.{layer}.attn."
        state[prefix + "W_Q"][0, query, :size_q] = HARD * torch.eye(size_q)
        state[prefix + "W_K"][0, key, :size_q] = torch.eye(size_q).roll(shift, dims=1)
        state[prefix + "W_V"][0, value, :size_v] = torch.eye(size_v)
        state[prefix + "W_O"][0, :size_v, out] = torch.eye(size_v)

    head(0, position, position, token, previous, N_CTX, vocab, shift=1)  # key s scores for query s + 1
    if rule == "lexical":
        head(1, previous, previous, token, token, vocab, vocab)
    else:
        head(1, previous, previous, position, pointer, vocab, N_CTX)
        head(2, pointer, position, token, token, N_CTX, vocab)
    model.load_state_dict(state)
    config = GPT2Config(n_layer=n_layers, n_head=1, n_embd=d_model, n_positions=N_CTX, vocab_size=vocab)
    return TLSubject(model, model_id=f"toy:{rule}", config=config, tokenizer=tokenizer, prepend_bos=False,
                     weights_sha256=None)
