"""Tiny random models for tests and examples: real Hugging Face architectures, random weights, byte tokenizer.

`tiny:llama` (grouped-query attention) runs on every backend; `tiny:gemma3` (query/key norms, a 4-token
sliding window on local layers, query_pre_attn_scalar != d_head) exercises Gemma's attention rules on the
nnsight backend (TransformerLens only builds Gemma 3 from its official names).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from mechkit.errors import UnknownModelError

SPECIAL = ["<pad>", "<bos>", "<eos>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: ids 0-2 are <pad>, <bos>, <eos>; every byte is one token after them."""
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL + byte_chars)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>")


def _configs() -> dict:
    from transformers import Gemma3TextConfig, LlamaConfig

    vocab = len(SPECIAL) + 256
    return {
        "llama": LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False,
        ),
        "gemma3": Gemma3TextConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        ),
    }


TINY_NAMES = ("llama", "gemma3")


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(hf_model, tokenizer) for `tiny:<name>`, weights drawn from a local generator seeded with `seed`."""
    configs = _configs()
    if name not in configs:
        raise UnknownModelError(f"unknown tiny model 'tiny:{name}'; known: {', '.join('tiny:' + n for n in configs)}")
    config = configs[name]
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.architectures = [type(model).__name__]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:  # norm weights: around their neutral value, perturbed
                param.copy_(param + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model.to(dtype).eval(), byte_tokenizer()
