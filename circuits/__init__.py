"""mechkit.circuits — filled by later issues."""
