"""Training loops shared by the optimizer tests."""

import jax
import optax


def run_scan(tx, loss, params, steps):
  """Runs ``steps`` scheduled steps of ``tx`` on ``loss`` in one compiled scan."""

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=steps))(params)
  return params
