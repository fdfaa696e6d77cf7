"""Checkpoints that ship inside the package (trained by the project's own recipes)."""
