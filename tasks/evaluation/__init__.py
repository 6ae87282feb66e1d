"""Evaluation metrics for CLIP models: zero-shot classification, retrieval, embedding geometry.

The metric functions work on plain numpy arrays so they can be checked against hand-computed
values; the model-facing helpers (classifier building, encoding) are thin layers on top.
Conventions follow LAION-AI/CLIP_benchmark (see /work/shared/reference/methods.md).
"""
