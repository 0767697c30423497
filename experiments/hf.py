"""HF-format checkpoints (llama, qwen2, qwen3, phi, gemma) in Flax NNX: the public names.

GGUF files (llama, qwen2, qwen3) load through the same ``load_model`` / ``load_tokenizer`` /
``chat_template``; ``save_gguf`` exports one.

Example:
  >>> import jax.numpy as jnp
  >>> from experiments import hf
  >>> model = hf.load_model("../shared/data/hf_tiny/llama")  # doctest: +SKIP
  >>> tok = hf.load_tokenizer("../shared/data/hf_tiny/llama")  # doctest: +SKIP
  >>> enc = tok.encode("Who wrote it?")  # doctest: +SKIP
  >>> ids = jnp.asarray([enc.ids]); mask = jnp.ones_like(ids)  # doctest: +SKIP
  >>> hf.greedy_generate(model, ids, mask, 8).shape  # doctest: +SKIP
  (1, 8)
"""

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.models.generate import generate
from experiments.models.hf.config import SUPPORTED_MODEL_TYPES as SUPPORTED_MODEL_TYPES
from experiments.models.hf.config import Arch as Arch
from experiments.models.hf.config import CheckpointError as CheckpointError
from experiments.models.hf.gguf_write import save_gguf as save_gguf
from experiments.models.hf.loading import chat_template as chat_template
from experiments.models.hf.loading import hf_tensors as hf_tensors
from experiments.models.hf.loading import load_model as load_model
from experiments.models.hf.loading import load_tokenizer as load_tokenizer
from experiments.models.hf.loading import save_model as save_model
from experiments.models.hf.lora import ALL_TARGETS as ALL_TARGETS
from experiments.models.hf.lora import ATTENTION_TARGETS as ATTENTION_TARGETS
from experiments.models.hf.lora import BASE as BASE
from experiments.models.hf.lora import add_lora as add_lora
from experiments.models.hf.lora import has_lora as has_lora
from experiments.models.hf.lora import merge_lora as merge_lora
from experiments.models.hf.model import CausalLM as CausalLM
from experiments.models.hf.sharding import RULES as RULES
from experiments.models.hf.sharding import logical_spec as logical_spec
from experiments.models.hf.sharding import make_mesh as make_mesh

__all__ = (
  "ALL_TARGETS",
  "ATTENTION_TARGETS",
  "Arch",
  "BASE",
  "CausalLM",
  "CheckpointError",
  "RULES",
  "SUPPORTED_MODEL_TYPES",
  "add_lora",
  "chat_template",
  "greedy_generate",
  "has_lora",
  "hf_tensors",
  "load_model",
  "load_tokenizer",
  "logical_spec",
  "make_mesh",
  "merge_lora",
  "save_gguf",
  "save_model",
)


def greedy_generate(model: nnx.Module, ids, mask, max_new_tokens: int) -> jax.Array:
  """Greedy continuation ``(B, max_new_tokens)`` int32 of left-padded prompts, no EOS stop.

  The KV-cached loop of :func:`experiments.models.generate.generate` (compiled once per
  architecture, prompt shape and length), at a fixed length as the ``hf_tiny`` references are
  made; the pipeline's evaluator stops at the checkpoint's EOS ids instead.

  Args:
    model: a loaded checkpoint (or any model with ``init_cache`` and ``decode``).
    ids: (B, P) prompt ids, left-padded.
    mask: (B, P) 1 for prompt tokens, 0 for padding.
    max_new_tokens: tokens to generate (>= 1).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.decoder import DecoderLM, config_for
    >>> model = DecoderLM(config_for("tiny", 50, 16), nnx.Rngs(0))
    >>> ids = jnp.array([[0, 5, 6], [4, 5, 6]], jnp.int32)
    >>> greedy_generate(model, ids, (ids > 0).astype(jnp.int32), 4).shape
    (2, 4)
  """
  ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
  return generate(model, ids, mask, max_new_tokens)
