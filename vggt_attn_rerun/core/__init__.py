"""Torch, no rerun: tokens, images, models, introspection, hooks, capture, q/k cache, resources."""
