"""Parameter placement on a ``(data, model)`` mesh by logical axis rules.

FSDP over ``data`` (the ``embed`` axis of every matrix), tensor parallelism over ``model``
(vocabulary, heads, MLP width). A dimension that a mesh axis does not divide (one KV head on
two devices) is replicated along that axis instead of failing, and no mesh axis is used twice
in one parameter.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Logical axis -> mesh axis (None: replicated).
RULES: tuple[tuple[str, str | None], ...] = (
  ("layers", None),  # the scanned blocks' stacking axis: every device holds every layer
  ("vocab", "model"),
  ("embed", "data"),
  ("q_heads", "model"),
  ("kv_heads", "model"),
  ("mlp", "model"),
  ("head_dim", None),
  ("norm", None),
)


def make_mesh(data: int = 1, model: int = 1, devices=None) -> jax.sharding.Mesh:
  """A ``(data, model)`` mesh with Auto axis types (as MaxText and tunix use).

  Example:
    >>> make_mesh(1, 1).axis_names
    ('data', 'model')
  """
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((data, model), ("data", "model"), axis_types=auto, devices=devices)


def logical_spec(names, shape, mesh: jax.sharding.Mesh, rules=RULES) -> P:
  """The PartitionSpec that logical axis ``names`` imply for an array of ``shape`` on ``mesh``.

  Example:
    >>> mesh = make_mesh(1, 1)
    >>> logical_spec(("embed", "kv_heads", "head_dim"), (64, 1, 16), mesh)
    P('data', 'model', None)
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(names or (None,) * len(shape), shape, strict=True):
    axis = table.get(name)
    if axis is None or axis in used or axis not in mesh.shape or size % mesh.shape[axis]:
      spec.append(None)
    else:
      spec.append(axis)
      used.add(axis)
  return P(*spec)


def variable_sharding(variable: nnx.Variable, mesh: jax.sharding.Mesh | None):
  """Where a parameter goes: by its ``out_sharding`` names on ``mesh``, else the default device."""
  if mesh is None:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
  names = variable.get_metadata().get("out_sharding")
  return NamedSharding(mesh, logical_spec(names, variable.shape, mesh))


def check_mesh(mesh: jax.sharding.Mesh | None) -> None:
  """Raises ``ValueError`` unless ``mesh`` is None or an Auto mesh with ``data``/``model`` axes.

  Explicit axes (``jax.make_mesh``'s default) would need an output sharding on every gather and
  einsum of the model; the compiler places activations by itself on Auto axes.
  """
  if mesh is None:
    return
  if not {"data", "model"} & set(mesh.axis_names):
    raise ValueError(f"mesh axes {mesh.axis_names} name neither 'data' nor 'model'")
  if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
    raise ValueError(
      f"mesh axis types {mesh.axis_types} are not all Auto: build the mesh with "
      "make_mesh(data, model) or jax.make_mesh(..., axis_types=(AxisType.Auto,) * 2)"
    )
