"""Unlearning experiments for dualoptim_jax: Flax NNX model, TOFU-style data, losses, metrics, CLI.

Run ``python -m experiments.tofu --help``. Modules: ``model`` (decoder LM),
``tokenizer`` (local BPE), ``data``/``synthetic``/``tofu_data`` (corpora),
``batching``, ``losses``, ``metrics``, ``evaluate``, ``optimizers``, ``train``,
``checkpoint``, ``report``, ``plots``, ``pipeline`` (all phases) and ``tofu`` (CLI).
"""
