"""Unlearning experiments for dualoptim_jax, organised by concern.

- ``models/``: the in-house decoder LM (and HF-format families).
- ``data/``: QA corpora (generated, real TOFU), tokenizer, batching.
- ``loops/``: fine-tuning and unlearning loops, loss and optimizer registries, checkpoints.
- ``evaluation/``: TOFU evaluation, metrics glue, report tables, plots.
- ``pipeline``: every phase of the TOFU job; ``tofu``: its CLI (``python -m experiments.tofu``).
"""
