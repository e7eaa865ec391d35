"""Train a native model on MQAR, induction or REGBENCH: AdamW, linear warmup then cosine decay, seeded, resumable.

The run directory is a native checkpoint (`model.safetensors` + `config.json` with the model config, this
TrainConfig and the metrics) plus `train_state.pt` (optimizer, schedule, step) while unfinished. Every `eval_every`
steps the test accuracy is measured and the checkpoint rewritten, so a killed run resumes from its last evaluation
(calling `train` again with the same config); batch i is drawn from `default_rng((seed, 1, i))`, so a resumed run
sees the batches the uninterrupted one would have.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import mechkit
from mechkit.errors import MechkitError, OutputPathError
from mechkit.native.checkpoint import CONFIG, read_config, save_checkpoint
from mechkit.native.config import NativeConfig
from mechkit.native.data import TASKS, TaskData, task_data
from mechkit.native.model import NativeModel

STATE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Task, model and optimisation settings of one run (`out`: the run directory).

    mixers: one mixer per layer. d_head None: d_model // n_heads. n_train / n_test: examples (REGBENCH: automata,
    one instance each). max_string_len: REGBENCH's exclusive bound on string length. target_accuracy: stop after the
    first evaluation reaching it (Zoology stops at 0.99); None trains all `steps`.
    """

    out: str
    task: str = "mqar"
    mixers: tuple[str, ...] = ("softmax", "softmax")
    d_model: int = 64
    n_heads: int = 1
    d_head: int | None = None
    d_mlp: int = 0
    feature_dim: int = 16
    window: int = 64
    short_conv: int = 4
    chunk_size: int = 64
    kernel: str = "chunk"
    ngram_orders: tuple[int, ...] = ()
    vocab_size: int = 256
    seq_len: int = 128
    kv_pairs: int = 8
    n_train: int = 20_000
    n_test: int = 1_000
    max_string_len: int = 12
    steps: int = 2_000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    eval_every: int = 250
    target_accuracy: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mixers", tuple(self.mixers))
        object.__setattr__(self, "ngram_orders", tuple(self.ngram_orders))
        if self.task not in TASKS:
            raise MechkitError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        for name in ("steps", "batch_size", "eval_every", "n_train", "n_test"):
            if getattr(self, name) < 1:
                raise MechkitError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise MechkitError(f"need lr > 0, weight_decay >= 0 and warmup_steps >= 0, got {self.lr}, "
                               f"{self.weight_decay}, {self.warmup_steps}")
        if self.d_model % self.n_heads and self.d_head is None:
            raise MechkitError(f"d_model {self.d_model} is not divisible by {self.n_heads} heads; pass d_head")
        self.model_config(self.vocab_size)  # checks the model settings before any data is generated

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def model_config(self, vocab_size: int, token_names: tuple[str, ...] = ()) -> NativeConfig:
        return NativeConfig(
            vocab_size=vocab_size, mixers=self.mixers, d_model=self.d_model, n_heads=self.n_heads,
            d_head=self.d_head or self.d_model // self.n_heads, context_length=self.seq_len, d_mlp=self.d_mlp,
            ngram_orders=self.ngram_orders, short_conv=self.short_conv, feature_dim=self.feature_dim,
            window=self.window, chunk_size=self.chunk_size, kernel=self.kernel, token_names=token_names)


def _previous(config: TrainConfig) -> dict | None:
    """What an earlier run of the same config left in `out`: {"finished": True} or its train state (None if
    nothing); a run with other settings, or other files, is refused."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--out {out} is a file; pass a directory for the run")
    if (out / STATE).is_file():
        previous = torch.load(out / STATE, weights_only=True)
    elif (out / CONFIG).is_file():
        previous = read_config(out)
        if not previous.get("finished"):
            raise OutputPathError(f"{out} holds an unfinished run without its {STATE}; pass another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise OutputPathError(f"--out {out} is a non-empty directory without a run; pass a new directory")
    else:
        return None
    differs = {k: (previous["train"].get(k), v) for k, v in config.to_dict().items()
               if k != "out" and previous["train"].get(k) != v}
    if differs:
        raise OutputPathError(f"{out} holds a run with other settings ({differs}, saved vs asked); pass another "
                              "--out, or the same settings to resume it")
    return previous


def _schedule(config: TrainConfig, step: int) -> float:
    """Learning-rate factor: linear warmup, then cosine decay to 0 at `steps`."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def evaluate(model: NativeModel, data: TaskData, batch_size: int) -> float:
    """Test accuracy of the argmax predictions."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(tokens).argmax(-1) for tokens in data.test_tokens.split(batch_size)])
    model.train()
    return data.accuracy(pred)


def _save(model, optimizer, schedule, config: TrainConfig, progress: dict, finished: bool) -> None:
    """Write the checkpoint; while unfinished, first the train state (weights, optimizer, progress) to resume from."""
    out = Path(config.out)
    if not finished:
        tmp = out / f".{STATE}.tmp-{os.getpid()}"
        torch.save({"train": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "progress": progress}, tmp)
        os.replace(tmp, out / STATE)
    seconds = progress["train_seconds"]
    tokens = progress["step"] * config.batch_size * config.seq_len
    metrics = {**progress, "tokens_per_second": tokens / seconds if seconds else None,
               "test_accuracy": progress["history"][-1]["test_accuracy"] if progress["history"] else None}
    save_checkpoint(model, out, {"train": config.to_dict(), "metrics": metrics, "finished": finished,
                                 "mechkit_version": mechkit.__version__, "state_sizes": model.state_sizes(),
                                 "n_parameters": sum(p.numel() for p in model.parameters())})
    if finished:
        (out / STATE).unlink(missing_ok=True)


def train(config: TrainConfig, verbose: bool = True) -> Path:
    """Train (or resume, or return the finished run in `config.out`); return the run directory."""
    previous = _previous(config)
    out = Path(config.out)
    if previous is not None and previous.get("finished"):
        return out
    data = task_data(config)
    model = NativeModel(config.model_config(data.vocab_size, data.token_names), seed=config.seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(config, step))
    progress = {"step": 0, "train_seconds": 0.0, "eval_seconds": 0.0, "history": []}
    if previous is not None:
        model.load_state_dict(previous["model"])
        optimizer.load_state_dict(previous["optimizer"])
        schedule.load_state_dict(previous["schedule"])
        progress = previous["progress"]
    out.mkdir(parents=True, exist_ok=True)
    model.train()
    bar = tqdm(range(progress["step"], config.steps), initial=progress["step"], total=config.steps,
               desc=f"train {config.task} {','.join(config.mixers)}", disable=not verbose)
    n_train = len(data.train_tokens)
    for step in bar:
        start = time.perf_counter()
        rows = torch.from_numpy(np.random.default_rng((config.seed, 1, step)).integers(0, n_train, config.batch_size))
        labels = data.train_labels[rows]
        labeled = labels != -100
        loss = F.cross_entropy(model(data.train_tokens[rows], read=labeled), labels[labeled])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress["train_seconds"] += time.perf_counter() - start
        progress["step"] = step + 1
        if (step + 1) % config.eval_every and step + 1 != config.steps:
            continue
        start = time.perf_counter()
        accuracy = evaluate(model, data, config.batch_size)
        progress["eval_seconds"] += time.perf_counter() - start
        progress["history"].append({"step": step + 1, "loss": loss.item(), "test_accuracy": accuracy})
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.3f}")
        done = step + 1 == config.steps or (config.target_accuracy is not None and accuracy >= config.target_accuracy)
        _save(model, optimizer, schedule, config, progress, finished=done)
        if done:
            break
    bar.close()
    return out
