"""Private implementation modules; import from ``dualoptim_jax``."""
