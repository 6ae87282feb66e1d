"""Distillation methods: TinyCLIP weight inheritance, affinity mimicking, MobileCLIP views."""
