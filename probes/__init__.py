"""mechkit.probes — filled by later issues."""
