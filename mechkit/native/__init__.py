"""mechkit's native efficient-attention language models: hooked like TransformerLens, trained on MQAR / induction /
REGBENCH, with recurrent states exposed to hooks and editable between two pieces of a run.

    from mechkit.native import NativeConfig, NativeModel
    model = NativeModel(NativeConfig(vocab_size=256, mixers=("softmax", "delta_net")))
"""

from mechkit.native.cache import NativeCache
from mechkit.native.checkpoint import load_checkpoint, save_checkpoint
from mechkit.native.config import NativeConfig
from mechkit.native.mixers import MIXERS
from mechkit.native.model import NativeModel
from mechkit.native.state import run_with_state_edit
from mechkit.native.tokenizer import WordTokenizer

__all__ = [
    "MIXERS",
    "NativeCache",
    "NativeConfig",
    "NativeModel",
    "WordTokenizer",
    "load_checkpoint",
    "run_with_state_edit",
    "save_checkpoint",
]
