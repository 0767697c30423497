"""RMU and activation matching as experiments glue: the layer, the losses, what is trained.

RMU (Li et al., WMDP) works on the residual stream after one block ``L``: on forget answer
tokens it pushes that hidden state to a fixed random control vector
(:func:`dualoptim_jax.unlearning.rmu_loss`), and only a few weights are trained, by default
the MLP output projections of blocks ``L - 2 .. L``. The activation-matching retain loss
(``AM``) keeps the retain answer tokens' hidden state after block ``L`` at the frozen
reference's (:func:`dualoptim_jax.unlearning.activation_mse`).

Masks are *not* shifted here: the hidden state at position ``t`` belongs to token ``t``, so
``batch.targets`` (1 on the answer tokens and the final EOS) selects the answer positions.

The models give the hidden state from the forward pass that computes the logits
(``apply(params, ids, mask, hidden_layer=L) -> (logits, hidden)``); a loss that reads only
the hidden state leaves the logits, and the in-house model's later blocks, to XLA's dead-code
elimination.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dualoptim_jax import unlearning

# The norm of the control vector, against the typical norm of the hidden state it replaces:
# after block 0 of the fine-tuned in-house small model the answer tokens' residual stream has
# a norm of 25 (median; mean 37), so 20 sends the forget tokens to a point as far from their
# old place as they are from the origin. open-unlearning's TOFU config sets 2 for Llama.
RMU_COEFF = 20.0
RMU_SPAN = 3  # blocks, ending at the RMU layer, whose MLP output projection is trained
# The MLP output projection's name in each model: in-house SwiGLU, HF gated MLP, phi's fc MLP.
MLP_OUT = ("down", "down_proj", "fc2")


class ModelMismatch(ValueError):
  """A loss's options do not fit the model (a layer it lacks, nothing to train)."""


def _name(key) -> object:
  return getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))


def _paths(params) -> list[tuple[tuple, jax.Array]]:
  return [
    (tuple(_name(k) for k in path), x) for path, x in jax.tree_util.tree_leaves_with_path(params)
  ]


def layer_count(params) -> tuple[int, bool]:
  """``(number of blocks, stacked)`` of a model's (trained) parameters.

  The in-house decoder keeps one subtree per block (``blocks/0/...``); the HF model stacks
  every block's parameters along a leading ``layers`` axis (``blocks/mlp/down_proj/kernel``
  of shape ``(layers, ...)``, LoRA factors too).

  Example:
    >>> from flax import nnx
    >>> from experiments.models.decoder import DecoderLM, config_for
    >>> _, params = nnx.split(DecoderLM(config_for("small", 50, 16), nnx.Rngs(0)))
    >>> layer_count(params)
    (2, False)
  """
  blocks = [(p, x) for p, x in _paths(params) if p and p[0] == "blocks"]
  if not blocks:
    raise ModelMismatch("the trained parameters hold no transformer blocks")
  indices = {p[1] for p, _ in blocks if len(p) > 1 and isinstance(p[1], int)}
  if indices:
    return max(indices) + 1, False
  return int(blocks[0][1].shape[0]), True


def default_layer(n_layers: int) -> int:
  """The block (0-based) whose output sits closest to two thirds of the depth.

  ``round(2 n / 3) - 1``: block 0 of the in-house 2-block ``small`` model, 3 of ``base`` (6),
  19 of SmolLM2-135M (30), 10 of a 16-block Llama-3.2-1B.

  Example:
    >>> [default_layer(n) for n in (1, 2, 6, 16, 30)]
    [0, 0, 3, 10, 19]
  """
  return max(round(2 * n_layers / 3) - 1, 0)


def hidden_layer(params, layer: int | None) -> int:
  """The RMU layer of a model: ``layer``, or :func:`default_layer` of its block count.

  Raises:
    ModelMismatch: ``layer`` is not one of the model's blocks.
  """
  n, _ = layer_count(params)
  if layer is None:
    return default_layer(n)
  if not 0 <= layer < n:
    raise ModelMismatch(f"RMU/AM layer={layer} is not a block of this model (0..{n - 1})")
  return int(layer)


def trainable_mask(params, layer: int | None = None, span: int = RMU_SPAN):
  """RMU's trained parameters as 0/1 multipliers shaped to broadcast over each leaf.

  1 on the MLP output projections (:data:`MLP_OUT`) of blocks ``L - span + 1 .. L``
  (clipped at 0), 0 elsewhere. A per-block leaf (in-house) gets a scalar; a stacked leaf
  (HF, leading ``layers`` axis) gets ``(layers, 1, ..., 1)``, so the chosen layers' slices
  train and the others stay bit-identical. Applied to gradients and updates, it also keeps
  weight decay off the frozen weights.

  Raises:
    ModelMismatch: a bad layer, or no MLP output projection among the trained parameters
      (e.g. LoRA adapters on attention only).

  Example:
    >>> from flax import nnx
    >>> from experiments.models.decoder import DecoderLM, config_for
    >>> _, params = nnx.split(DecoderLM(config_for("small", 50, 16), nnx.Rngs(0)))
    >>> mask = trainable_mask(params, layer=1, span=1)
    >>> float(mask["blocks"][1]["mlp"]["down"][...]), float(mask["blocks"][0]["mlp"]["down"][...])
    (1.0, 0.0)
  """
  last = hidden_layer(params, layer)
  chosen = range(max(last - span + 1, 0), last + 1)
  n, stacked = layer_count(params)
  found = []

  def leaf(path, x):
    names = [_name(k) for k in path]
    on = bool(names) and names[0] == "blocks" and any(m in names for m in MLP_OUT)
    if not stacked or not on:  # a per-block leaf, or one the method never trains
      value = on and len(names) > 1 and names[1] in chosen
      found.append(value)
      return jnp.asarray(1.0 if value else 0.0, x.dtype)
    found.append(True)
    rows = jnp.zeros((n,), x.dtype).at[jnp.asarray(list(chosen))].set(1)
    return rows.reshape((n,) + (1,) * (x.ndim - 1))

  mask = jax.tree_util.tree_map_with_path(leaf, params)
  if not any(found):
    raise ModelMismatch(
      "RMU trains the MLP output projections (down_proj), and none is among the trained "
      "parameters (with LoRA, add down_proj to the targets)"
    )
  return mask


def _hidden(apply, params, batch, layer: int) -> jax.Array:
  return apply(params, batch.ids, batch.mask, hidden_layer=layer)[1]


def rmu(apply, params, ref_params, b, *, layer=None, coeff=RMU_COEFF, span=RMU_SPAN):
  """RMU's forget loss: the hidden state after block ``layer`` on forget answer tokens -> the
  control vector (norm ``coeff``, drawn from the run's seed, ``b["seed"]``)."""
  del ref_params, span  # span is what is trained (trainable_mask), not part of the loss
  batch = b["forget"]
  hidden = _hidden(apply, params, batch, hidden_layer(params, layer))
  key = jax.random.key(b.get("seed", 0))
  control = unlearning.rmu_control_vector(key, hidden.shape[-1], steering_coeff=coeff)
  return unlearning.rmu_loss(hidden, control, batch.targets)


def am(apply, params, ref_params, b, *, layer=None):
  """Activation matching on the retain set: the hidden state after block ``layer`` on retain
  answer tokens kept at the frozen reference's (RMU's retain loss)."""
  batch = b["retain"]
  at = hidden_layer(params, layer)
  target = jax.lax.stop_gradient(_hidden(apply, ref_params, batch, at))
  return unlearning.activation_mse(_hidden(apply, params, batch, at), target, batch.targets)
