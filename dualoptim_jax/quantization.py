"""Blockwise 8-bit dynamic quantization with bitsandbytes' maps, shape-preserving.

``quantize_blockwise(x, signed=...)`` gives int8/uint8 codes of ``x.shape`` and
float32 per-block scales of shape ``(*x.shape[:-1], ceil(x.shape[-1] / block_size))``;
``dequantize_blockwise`` inverts it up to the map's resolution.
"""

from dualoptim_jax._src.quantization import QuantizedArray as QuantizedArray
from dualoptim_jax._src.quantization import dequantize_blockwise as dequantize_blockwise
from dualoptim_jax._src.quantization import dynamic_map as dynamic_map
from dualoptim_jax._src.quantization import quantize_blockwise as quantize_blockwise

__all__ = (
  "QuantizedArray",
  "dequantize_blockwise",
  "dynamic_map",
  "quantize_blockwise",
)
