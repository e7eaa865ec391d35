"""mechkit.kernels — filled by later issues."""
