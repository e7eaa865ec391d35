"""The DeltaNet family in chunks (PyTorch, WY/UT form): the fast CPU path; autograd works.

Per chunk of C tokens with entering state S, chunk-local G = cumsum(g), Γ_ij = exp(G_i − G_j) for j ≤ i
(0 above the diagonal) and write keys Wk = d ⊙ K:
    A = strict_tril(diag(β)(K Wkᵀ ⊙ Γ)),  [U | W] = (I + A)⁻¹ [β ⊙ V | β ⊙ e^G ⊙ K]   (unit-lower-triangular solve)
    V_new = U − W S,  O = scale · ((Q ⊙ e^G) S + (Q Wkᵀ ⊙ Γ) V_new),  S ← e^{G_C} S + (Wk ⊙ e^{G_C − G})ᵀ V_new.
While every chunk-local G stays above −FACTORED_LOG_DECAY, Γ ⊙ (X Wkᵀ) = tril((e^G ⊙ X)(e^{−G} ⊙ Wk)ᵀ) is computed
with the factors folded into the operands (as fla's chunked kernels do), and the state update reads the same
e^{−G} ⊙ Wk: S ← e^{G_C} (S + (e^{−G} ⊙ Wk)ᵀ V_new). Otherwise Γ is built from the differences.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import compute_dtype
from ..chunking import bmm, from_chunks, to_chunks
from .inputs import check_delta_net


# Chunk-local log-decay sums down to this use the factored Γ = e^{G_i} e^{−G_j} (e^40 ≈ 2e17, far inside float32).
FACTORED_LOG_DECAY = 40.0


def decay_matrix(G: Tensor) -> Tensor:
    """`[..., C]` log-decay cumsums -> `[..., C, C]` with `exp(G_i − G_j)` for j ≤ i and 0 above the diagonal."""
    C = G.shape[-1]
    lower = torch.ones(C, C, dtype=torch.bool, device=G.device).tril()
    return (G[..., :, None] - G[..., None, :]).masked_fill(~lower, -torch.inf).exp()


def delta_net_chunks(q, k, v, beta, g, write_scale, h0, scale: float, chunk_size: int):
    """Unchecked core of `chunk_delta_net`: return (o, final_state, states)."""
    (B, T, H, K), V = q.shape, v.shape[-1]
    C, dt = chunk_size, compute_dtype(q.dtype)
    # Chunk axis first: the recurrence over chunks reads one contiguous [B, H, C, d] block per step.
    qc, kc, vc, bc = (to_chunks(x, C, dt, chunk_first=True) for x in (q, k, v, beta))  # [N, B, H, C, d]
    wc = kc if write_scale is None else kc * write_scale.to(dt)[:, None, :]
    # Without decay (g None) Γ is the lower-triangular ones and e^G = 1: no exponentials at all.
    G = None if g is None else to_chunks(g, C, dt, chunk_first=True).cumsum(-2)  # [N, B, H, C, 1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    writes_T = None  # (e^{−G} ⊙ Wk)ᵀ, `[N, B, H, K, C]`, unless the decay is strong
    if G is None:
        qg, kg, writes_T = qc * scale, bc * kc, wc.transpose(-1, -2)
        A, scores = bmm(kg, writes_T), bmm(qg, writes_T) * causal
    elif G.min() >= -FACTORED_LOG_DECAY:
        # Γ_ij = e^{G_i} e^{−G_j} folded into the operands: no C x C exponentials (e^{±G} stay in float range).
        eG = G.exp()  # [N, B, H, C, 1]: the per-row factors cost a fraction of a pass over q, k
        qg, kg, writes_T = qc * (scale * eG), kc * (bc * eG), (wc / eG).transpose(-1, -2)
        A, scores = bmm(kg, writes_T), bmm(qg, writes_T) * causal
    else:  # strong decay within a chunk: Γ from the differences G_i − G_j
        eG, decay, qs, bk, wT = G.exp(), decay_matrix(G[..., 0]), qc * scale, bc * kc, wc.transpose(-1, -2)
        qg, kg = qs * eG, bk * eG
        A, scores = bmm(bk, wT) * decay, bmm(qs, wT) * decay
    # unitriangular=True reads only the strict lower part of A (so it needs no mask): this solves (I + A) X = rhs,
    # on contiguous right-hand sides (no concatenation), so U and W come out contiguous for the loop.
    U = torch.linalg.solve_triangular(A, bc * vc, upper=False, unitriangular=True)
    W = torch.linalg.solve_triangular(A, kg, upper=False, unitriangular=True)
    N, BH = qc.shape[0], B * H  # the loop runs on [B·H, ...] blocks: baddbmm fuses each matmul with its add
    U, W = U.view(N, BH, C, V), W.view(N, BH, C, K)
    # S ← e^{G_C} (S + writes_T V_new), reading writes_T in place (a view); with strong decay, where e^{−G} may
    # overflow, S ← e^{G_C} S + (e^{G_C − G} ⊙ Wk)ᵀ V_new instead.
    post_decay = writes_T is not None
    if post_decay:
        writes = writes_T.reshape(N, BH, K, C)
    else:
        writes = (wc * (G[..., -1:, :] - G).exp()).transpose(-1, -2).reshape(N, BH, K, C)
    step_decay = None if G is None else G[..., -1:, :].exp().view(N, BH, 1, 1)
    S = kc.new_zeros(BH, K, V) if h0 is None else h0.to(dt).reshape(BH, K, V)
    states, v_new = [], []
    for n in range(N):
        states.append(S)
        v_new.append(torch.baddbmm(U[n], W[n], S, alpha=-1))  # U − W S
        if not post_decay:
            S = torch.baddbmm(step_decay[n] * S, writes[n], v_new[-1])
        elif G is None:
            S = torch.baddbmm(S, writes[n], v_new[-1])
        else:
            S = torch.baddbmm(S, writes[n], v_new[-1]) * step_decay[n]
    states, v_new = torch.stack(states).view(N, B, H, K, V), torch.stack(v_new).view(N, B, H, C, V)
    o = torch.baddbmm(bmm(qg, states).view(-1, C, V), scores.reshape(-1, C, C), v_new.view(-1, C, V)).view(
        N, B, H, C, V)
    return from_chunks(o, T, chunk_first=True).to(q.dtype), S.view(B, H, K, V), states.movedim(0, 2)


def chunk_delta_net(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    v: Float[Tensor, "batch time head d_v"],
    beta: Float[Tensor, "batch time head"] | None = None,
    *,
    eta: Float[Tensor, "batch time head"] | None = None,
    eps: float = 1e-6,
    g: Float[Tensor, "batch time head"] | None = None,
    write_scale: Float[Tensor, "head d_k"] | None = None,
    scale: float | None = None,
    initial_state: Float[Tensor, "batch head d_k d_v"] | None = None,
    chunk_size: int = 64,
    output_states: bool = False,
):
    """Same signature and returns as `naive_delta_net`; o in the input dtype, states in float32 (float64 for
    float64 inputs)."""
    x = check_delta_net(q, k, v, beta, eta, eps, g, write_scale, scale, initial_state, chunk_size)
    o, final, states = delta_net_chunks(q, k, v, x.beta, g, write_scale, initial_state, x.scale, chunk_size)
    return (o, final, states) if output_states else (o, final)
