"""Hugging Face-format checkpoints (llama, qwen2, qwen3, phi, gemma) as Flax NNX models.

- ``config``: ``config.json`` in both key layouts -> one resolved :class:`~.config.Arch`.
- ``layers``, ``model``: the shared decoder; families differ by a few named choices.
- ``keys``: the checkpoint-key table (HF key <-> module path, transpose and reshape).
- ``safetensors_io``: reading (single or sharded, streamed) and writing safetensors files.
- ``sharding``: logical axis rules -> mesh placement.
- ``gguf_io`` (reading), ``gguf_tokenizer`` (tokenizer <-> ``tokenizer.ggml.*``), ``gguf_write``
  (``save_gguf``), ``tokenizer_files`` (special ids, chat template): GGUF files as checkpoints.
- ``loading``: ``load_model`` / ``save_model``; ``lora``: adapters (generation is the shared
  :mod:`experiments.models.generate`).
- ``step_time``: ``python -m experiments.models.hf.step_time`` times a training step.

The public names live in :mod:`experiments.hf`.
"""
