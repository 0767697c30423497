"""Models: the in-house decoder (``decoder``) and, later, HF-format families.

Every model is an ``nnx.Module`` called as ``model(ids, mask) -> logits``;
the loops work on its split ``(graphdef, params)`` through :func:`make_apply`.
"""

from __future__ import annotations


def make_apply(graphdef):
  """``apply(params, ids, mask) -> logits`` for an ``nnx`` graph definition.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.decoder import DecoderLM, config_for
    >>> graphdef, params = nnx.split(DecoderLM(config_for("tiny", 50, 16), nnx.Rngs(0)))
    >>> make_apply(graphdef)(params, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)).shape
    (1, 4, 50)
  """
  from flax import nnx

  return lambda params, ids, mask: nnx.merge(graphdef, params)(ids, mask)
