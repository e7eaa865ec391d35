"""mechkit's native efficient-attention language models: hooked like TransformerLens, trained on MQAR / induction /
REGBENCH, with recurrent states exposed to hooks and editable between two pieces of a run.

    from mechkit.native import NativeConfig, NativeModel
    model = NativeModel(NativeConfig(vocab_size=256, mixers=("softmax", "delta_net")))
    subject = mechkit.load("native:mqar-delta-net")     # a shipped zoo model as a Subject
    from mechkit.native.train import train               # train(TrainConfig(...)) -> run directory
"""

from mechkit.native.cache import NativeCache
from mechkit.native.checkpoint import load_checkpoint, save_checkpoint
from mechkit.native.config import NativeConfig
from mechkit.native.mixers import MIXERS
from mechkit.native.model import NativeModel
from mechkit.native.state import run_with_state_edit
from mechkit.native.tokenizer import WordTokenizer
from mechkit.native.train import TrainConfig
from mechkit.native.zoo import ZOO, list_zoo

__all__ = [
    "MIXERS",
    "ZOO",
    "NativeCache",
    "NativeConfig",
    "NativeModel",
    "TrainConfig",
    "WordTokenizer",
    "list_zoo",
    "load_checkpoint",
    "run_with_state_edit",
    "save_checkpoint",
]
