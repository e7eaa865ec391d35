"""Circuit discovery with a discrete sparse autoencoder (O'Neill & Bui 2024, arXiv 2405.12522).

Each head's output (z @ W_O, TransformerLens' hook_result) is mean-pooled over the real tokens of a prompt (or, with
`pooling="last"`, read at the last token, where every task here is scored); one small
SAE, shared by all heads, is trained on a handful of prompts; each (prompt, head) vector becomes an integer code, the
argmax latent. A head scores by the codes it shows on positives and never on negatives (node score), a head pair by
the code pairs seen on positives and never on negatives (edge score). Defaults follow the reference code
(research/methods.md §6.2-6.3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechkit.batch import Batch
from mechkit.circuits.examples import CircuitExamples, check_solvable
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, all_heads
from mechkit.scores import HeadScores


@dataclass
class SAEDiscoveryConfig:
    """Settings of `discover_circuit_sae`.

    n_latents: SAE dictionary size F; l1_coeff: λ of the loss MSE + λ·mean L1(latents); lr, n_epochs: Adam,
    full batch; n_sae_examples: prompts (drawn from the shuffled positives + negatives) whose head vectors train
    the SAE; pooling: "mean" (the paper's: each head's output averaged over the real tokens) or "last" (its output at
    the last token, the read position); normalize_node: divide the node score by the number of distinct codes of the
    head; edge_top_pairs:
    head pairs counted for the edge-derived head score (None: n_heads_total² / 8 unordered pairs, the reference's
    first n_heads_total² / 2 entries of its flattened ordered pair list); batch_size: prompts per forward pass;
    min_accuracy / criterion / on_unsolvable: the solvability check on the positives (`check_solvable`).
    """

    n_latents: int = 200
    l1_coeff: float = 0.02
    lr: float = 1e-3
    n_epochs: int = 500
    n_sae_examples: int = 10
    pooling: str = "mean"
    normalize_node: bool = False
    edge_top_pairs: int | None = None
    batch_size: int = 32
    min_accuracy: float = 0.5
    criterion: str = "argmax"
    on_unsolvable: str = "raise"
    seed: int = 0


@dataclass
class SAEDiscoveryResult:
    """node: codes unique to positives per head; edge: appearances of each head among the top-ranked pairs;
    edges: head pairs with a positive edge score, best first, as (head, head, score); codes `[2n, n_heads_total]`
    (positives, then negatives; heads layer-major); edge_matrix `[n_heads_total, n_heads_total]`; accuracy: the
    model's accuracy on the positives; sae_loss: final training loss; dead_fraction: share of (prompt, head) vectors
    whose latents are all zero (their code is 0 by convention)."""

    node: HeadScores
    edge: HeadScores
    edges: list[tuple[HeadId, HeadId, float]]
    codes: Int[Tensor, "example head"]
    edge_matrix: Float[Tensor, "head head"]
    accuracy: float
    sae_loss: float
    dead_fraction: float
    config: dict = field(default_factory=dict)


POOLINGS = ("mean", "last")


def head_features(
    subject, batch: Batch, batch_size: int = 32, verbose: bool = False, pooling: str = "mean"
) -> Float[Tensor, "batch head d_model"]:
    """Each head's output z @ W_O, mean-pooled over the real (non-padding) positions of each prompt (`pooling="mean"`)
    or taken at its last position (`"last"`; batches are left-padded, so that is the last real token); float32, CPU.

    Heads are layer-major (index layer * n_heads + head). Pooling z before W_O gives the same numbers at a fraction
    of the memory.
    """
    return head_features_and_logits(subject, batch, batch_size, verbose, pooling)[0]


def head_features_and_logits(
    subject, batch: Batch, batch_size: int = 32, verbose: bool = False, pooling: str = "mean"
) -> tuple[Float[Tensor, "batch head d_model"], Float[Tensor, "batch vocab"]]:
    """`head_features` and, from the same forward passes, the last-position logits of each prompt."""
    if pooling not in POOLINGS:
        raise MechkitError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(subject.n_layers)]
    W_O = [subject.W_O(layer).float().cpu() for layer in range(subject.n_layers)]
    out, logits = [], []
    starts = range(0, len(batch), batch_size)
    for start in tqdm(starts, desc="head outputs", disable=not verbose):
        chunk = batch.select(slice(start, start + batch_size))
        chunk_logits, cache = subject.run_with_cache(chunk, names_filter=names, last_only=True)
        logits.append(chunk_logits[:, -1].float().cpu())
        mask = chunk.attention_mask.float()[:, :, None, None]
        layers = []
        for layer, name in enumerate(names):
            z = cache[name].float().cpu()
            pooled = z[:, -1] if pooling == "last" else (z * mask).sum(1) / mask.sum(1)  # [batch, head, d_head]
            layers.append(torch.einsum("bhd,hdm->bhm", pooled, W_O[layer]))
        out.append(torch.cat(layers, dim=1))
    return torch.cat(out), torch.cat(logits)


class DiscreteSAE(nn.Module):
    """latents = ReLU((x - b_dec) W_enc^T + b_enc); reconstruction = latents W_dec + b_dec, rows of W_dec (the
    dictionary vectors) kept at unit norm; b_dec is the tied pre-encoder / post-decoder bias, initialised at 0."""

    def __init__(self, d_in: int, n_latents: int, generator: torch.Generator):
        super().__init__()
        bound = d_in ** -0.5
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.W_enc = nn.Parameter(F.normalize(torch.randn(n_latents, d_in, generator=generator), dim=-1))
        self.b_enc = nn.Parameter((2 * torch.rand(n_latents, generator=generator) - 1) * bound)
        self.W_dec = nn.Parameter(F.normalize(torch.randn(n_latents, d_in, generator=generator), dim=-1))

    def encode(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n n_latents"]:
        return F.relu((x - self.b_dec) @ self.W_enc.T + self.b_enc)

    def decode(self, latents: Float[Tensor, "n n_latents"]) -> Float[Tensor, "n d_in"]:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "n d_in"]) -> tuple[Tensor, Tensor]:
        latents = self.encode(x)
        return latents, self.decode(latents)

    def codes(self, x: Float[Tensor, "n d_in"]) -> Int[Tensor, " n"]:
        """The argmax latent of each vector (0 when all latents are 0)."""
        with torch.no_grad():
            return self.encode(x).argmax(-1)


def train_sae(
    x: Float[Tensor, "n d_in"], config: SAEDiscoveryConfig, generator: torch.Generator, verbose: bool = False
) -> tuple[DiscreteSAE, float]:
    """Train a DiscreteSAE on `x` full-batch with Adam; returns the SAE and its final loss."""
    sae = DiscreteSAE(x.shape[-1], config.n_latents, generator)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(config.n_epochs), desc="SAE", disable=not verbose):
        latents, recon = sae(x)
        loss = F.mse_loss(recon, x) + config.l1_coeff * latents.abs().sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sae.W_dec.copy_(F.normalize(sae.W_dec, dim=-1))
    return sae, float(loss.detach())


def node_scores(
    codes_pos: Int[Tensor, "n_pos head"], codes_neg: Int[Tensor, "n_neg head"], normalize: bool = False
) -> Float[Tensor, " head"]:
    """Per head, the number of codes seen on positives and never on negatives (over the distinct codes of the
    head when `normalize`)."""
    scores = []
    for head in range(codes_pos.shape[1]):
        pos, neg = set(codes_pos[:, head].tolist()), set(codes_neg[:, head].tolist())
        scores.append(len(pos - neg) / (len(pos | neg) if normalize else 1))
    return torch.tensor(scores, dtype=torch.float64)


def exact_codes(features: Float[Tensor, "example head d_model"], decimals: int = 4) -> Int[Tensor, "example head"]:
    """The finest discrete code: per head, one integer per distinct output vector (rounded to `decimals`).

    Merging codes never makes a code unique to positives, so a head whose node score is 0 under these codes scores 0
    under any SAE's argmax codes on the same examples: an upper bound on what the discretization can see."""
    rounded = features.mul(10 ** decimals).round()
    return torch.stack([torch.unique(rounded[:, h], dim=0, return_inverse=True)[1]
                        for h in range(features.shape[1])], dim=1)


def edge_scores(
    codes_pos: Int[Tensor, "n_pos head"], codes_neg: Int[Tensor, "n_neg head"], n_codes: int
) -> Float[Tensor, "head head"]:
    """Per head pair, the number of code pairs seen together on positives and never on negatives (symmetric, zero
    diagonal). One row of the upper triangle at a time, so memory stays at [n, head]."""
    n_heads = codes_pos.shape[1]
    matrix = torch.zeros(n_heads, n_heads, dtype=torch.float64)
    for h1 in range(n_heads - 1):
        later = slice(h1 + 1, None)
        offsets = torch.arange(n_heads - h1 - 1, dtype=torch.long) * n_codes * n_codes
        pos = (offsets + codes_pos[:, h1, None] * n_codes + codes_pos[:, later]).flatten().unique()
        neg = (offsets + codes_neg[:, h1, None] * n_codes + codes_neg[:, later]).flatten().unique()
        only = pos[~torch.isin(pos, neg)]
        matrix[h1, later] = torch.bincount(only // (n_codes * n_codes), minlength=n_heads - h1 - 1).double()
    return matrix + matrix.T


def rank_edges(
    matrix: Float[Tensor, "head head"], n_layers: int, n_heads: int, top_pairs: int | None = None
) -> tuple[list[tuple[HeadId, HeadId, float]], Float[Tensor, " head"]]:
    """Head pairs with a positive edge score, best first (ties layer-major), and each head's number of appearances
    among the first `top_pairs` of them (default n_heads_total² / 8)."""
    total = matrix.shape[0]
    top_pairs = max(1, total * total // 8) if top_pairs is None else top_pairs
    i, j = torch.triu_indices(total, total, offset=1)
    values = matrix[i, j]
    order = torch.sort(-values, stable=True).indices
    order = order[values[order] > 0]  # positive pairs only, still best first
    heads = all_heads(n_layers, n_heads)
    ranked = [(heads[a], heads[b], v) for a, b, v in zip(i[order].tolist(), j[order].tolist(), values[order].tolist())]
    top = order[:top_pairs]
    counts = (torch.bincount(i[top], minlength=total) + torch.bincount(j[top], minlength=total)).double()
    return ranked, counts


def discover_circuit_sae(
    subject, examples: CircuitExamples, config: SAEDiscoveryConfig | None = None, verbose: bool = True
) -> SAEDiscoveryResult:
    """Rank heads (node and edge-derived scores) and head pairs of `examples`' task with a discrete SAE.

    Checks first that there are enough prompts, and that the model solves the positives (`config.min_accuracy`, from
    the logits of the same forward pass that reads their head outputs, before the negatives run).
    """
    config = config or SAEDiscoveryConfig()
    n = len(examples)
    if n < 2:
        raise MechkitError(f"task {examples.name!r} has {n} positive / negative pair(s); give at least 2 of each")
    if 2 * n < config.n_sae_examples:
        raise MechkitError(
            f"task {examples.name!r} has {2 * n} prompts (positives + negatives) but the SAE trains on "
            f"n_sae_examples={config.n_sae_examples}; add examples or lower n_sae_examples"
        )
    if config.n_sae_examples < 1 or config.n_latents < 1 or config.n_epochs < 0:
        raise MechkitError("n_sae_examples and n_latents must be at least 1 and n_epochs at least 0; fix the config")
    positives, logits = head_features_and_logits(subject, examples.positives, config.batch_size, verbose,
                                                 config.pooling)
    accuracy = check_solvable(subject, examples, config.min_accuracy, config.criterion, config.on_unsolvable,
                              logits=logits)
    negatives = head_features(subject, examples.negatives, config.batch_size, verbose, config.pooling)
    features = torch.cat([positives, negatives])  # [2n, head, d_model]
    generator = torch.Generator().manual_seed(config.seed)
    train = features[torch.randperm(2 * n, generator=generator)[:config.n_sae_examples]]
    sae, loss = train_sae(train.flatten(0, 1), config, generator, verbose)
    with torch.no_grad():
        latents = sae.encode(features.flatten(0, 1))
    codes = latents.argmax(-1).view(2 * n, -1)
    dead = float((latents.amax(-1) == 0).float().mean())
    node = node_scores(codes[:n], codes[n:], config.normalize_node)
    matrix = edge_scores(codes[:n], codes[n:], config.n_latents)
    ranked, counts = rank_edges(matrix, subject.n_layers, subject.n_heads, config.edge_top_pairs)
    shape = (subject.n_layers, subject.n_heads)
    common = {"model": subject.model_id, "n_items": n, "seed": config.seed, "config": asdict(config)}
    return SAEDiscoveryResult(
        node=HeadScores(node.view(shape), metric="sae_node", **common),
        edge=HeadScores(counts.view(shape), metric="sae_edge", **common),
        edges=ranked, codes=codes, edge_matrix=matrix, accuracy=accuracy, sae_loss=loss, dead_fraction=dead,
        config=asdict(config),
    )
