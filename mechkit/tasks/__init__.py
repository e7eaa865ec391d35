"""Synthetic task data with a known ground truth, one module per task."""
