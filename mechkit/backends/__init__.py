"""Subject backends: TransformerLens (`tl`) and nnsight over the Hugging Face model (`nnsight`)."""
