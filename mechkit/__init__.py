"""mechkit: find the attention heads and mechanisms that do a job in a language model, offline.

    import mechkit
    subject = mechkit.load("gemma-3-270m")           # after `mechkit models fetch gemma-3-270m`
    rows = subject.attention_rows("The cat sat on the mat.", layers=5, query_positions=[-1])
"""

__version__ = "0.1.0"

from mechkit.batch import Batch
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, parse_head, parse_heads
from mechkit.interventions import ActivationPatch, HeadAblation, UniformAttention
from mechkit.loading import load
from mechkit.scores import HeadScores
from mechkit.subject import Subject

__all__ = [
    "ActivationPatch",
    "Batch",
    "HeadAblation",
    "HeadId",
    "HeadScores",
    "MechkitError",
    "Subject",
    "UniformAttention",
    "__version__",
    "load",
    "parse_head",
    "parse_heads",
]
