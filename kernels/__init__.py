"""mechkit.kernels — efficient-attention kernels with exposed states and exact implied attention.

One folder per family (`linear_attn`, `delta_net`, `based`, `sliding_window`), each with `naive` (float64 token
recurrence, the reference), `chunk` (PyTorch, the CPU path), `triton` (forward Triton kernels with STORE_STATES /
STORE_FINAL_STATE) and `implied` (the matrix A with o = A v). Layout `[batch, time, head, dim]`; see docs/kernels.md.
"""
