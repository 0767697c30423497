"""Models: the in-house decoder (``decoder``) and the HF-format families (``hf``).

Every model is an ``nnx.Module`` called as ``model(ids, mask) -> logits`` (and
``model(ids, mask, hidden_layer=L) -> (logits, hidden)``, the residual stream after
block ``L`` from the same forward pass); the loops work on its split
``(graphdef, params[, frozen])`` through :func:`make_apply`: ``params`` is what they
train (all parameters, or a LoRA model's adapters) and ``frozen`` the rest (a LoRA
model's base weights), passed to every jitted step as an argument.
"""

from __future__ import annotations


def make_apply(graphdef):
  """``apply(params, ids, mask, frozen=None, **kw) -> logits`` for an ``nnx`` graph definition.

  ``frozen`` is merged with ``params`` when given (see :func:`with_frozen`); keywords go to
  the model (``hidden_layer=L``: ``(logits, hidden)``, the residual stream after block ``L``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from experiments.models.decoder import DecoderLM, config_for
    >>> graphdef, params = nnx.split(DecoderLM(config_for("tiny", 50, 16), nnx.Rngs(0)))
    >>> make_apply(graphdef)(params, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)).shape
    (1, 4, 50)
  """
  from flax import nnx

  def apply(params, ids, mask, frozen=None, **kw):
    rest = () if frozen is None else (frozen,)
    return nnx.merge(graphdef, params, *rest)(ids, mask, **kw)

  return apply


def with_frozen(apply, frozen):
  """``apply`` with the untrained state bound: ``(params, ids, mask, **kw)``, as losses call it.

  Bind inside the jitted step (``frozen`` a traced argument): closed over outside
  ``jit``, the frozen weights would be compiled into the program as constants.

  Example:
    >>> with_frozen(print, None) is print
    True
  """
  if frozen is None:
    return apply
  return lambda params, ids, mask, **kw: apply(params, ids, mask, frozen, **kw)
