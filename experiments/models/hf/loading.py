"""``load_model`` / ``save_model``: HF-format folders (or GGUF files) <-> :class:`~.model.CausalLM`.

Loading builds the model abstractly (``nnx.eval_shape``: no parameter memory), checks the
checkpoint's keys against the key table strictly, then streams each tensor: read from its
file, checked, transposed/reshaped, cast, and ``device_put`` straight into its sharding. The
host holds one tensor at a time. A GGUF file (:mod:`.gguf_io`) is read through the same HF keys
and layouts: :func:`open_checkpoint` gives either source.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from experiments.models.hf import sharding
from experiments.models.hf.config import (
  Arch,
  CheckpointError,
  arch_from_dict,
  config_dict,
  read_config,
)
from experiments.models.hf.gguf_io import GGUFFile, find_gguf
from experiments.models.hf.keys import IGNORED_KEYS, key_table
from experiments.models.hf.model import CausalLM
from experiments.models.hf.safetensors_io import SafetensorsFolder, write_folder
from experiments.models.hf.tokenizer_files import read_chat_template


def _listing(keys: list[str], limit: int = 5) -> str:
  more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value


def _read_entry(files, e, dtype) -> np.ndarray:
  """One parameter from ``files`` in our layout and ``dtype``; a stacked kind is filled layer by
  layer into one host buffer (the host holds one parameter kind at a time)."""
  value = None
  for i, key in enumerate(e.keys):
    tensor = files.read(key)
    if tuple(tensor.shape) != e.hf_shape:
      raise CheckpointError(
        f"tensor {key!r} in {files.keys[key]} has shape {tuple(tensor.shape)}, but "
        f"the config implies {e.hf_shape}"
      )
    part = e.to_param(tensor).astype(dtype)
    del tensor
    if e.num_layers is None:
      return part
    if value is None:
      value = np.empty(e.stacked_shape, dtype)
    value[i] = part
  return value


def open_checkpoint(
  path: str | pathlib.Path,
) -> tuple[Arch, dict, SafetensorsFolder | GGUFFile]:
  """The architecture, raw ``config.json`` dict and tensor source of an HF folder or GGUF file.

  ``path`` is a GGUF file, a folder holding exactly one ``.gguf`` and no ``config.json``, or an
  HF folder. The source has ``keys`` (HF key -> where) and ``read(key)`` in HF's layout; use it
  as a context manager.

  Raises:
    FileNotFoundError: no such path, or a folder with neither ``config.json`` nor a GGUF file.
    CheckpointError: an unreadable or unsupported checkpoint (the message names file and key).

  Example:
    >>> arch, raw, source = open_checkpoint("../shared/data/hf_tiny/qwen3")  # doctest: +SKIP
    >>> with source as files:  # doctest: +SKIP
    ...   files.read("model.norm.weight").shape
    (64,)
  """
  file = find_gguf(path)
  if file is None:
    arch, raw = read_config(path)
    return arch, raw, SafetensorsFolder(path)
  source = GGUFFile(file)
  raw = source.config()
  try:
    arch = arch_from_dict(raw)
  except CheckpointError as e:
    raise CheckpointError(f"{file}: {e}") from None
  return arch, raw, source


def load_model(
  path: str | pathlib.Path, *, dtype=jnp.float32, mesh=None, remat: str = "dots"
) -> CausalLM:
  """Loads an HF-format checkpoint folder of a supported ``model_type`` as a ``CausalLM``.

  Args:
    path: folder with ``config.json`` and ``model.safetensors`` (or shards and
      ``model.safetensors.index.json``), weights in float32, float16 or bfloat16; or a GGUF
      file (or a folder holding one; see :func:`open_checkpoint`), dequantized to float32.
    dtype: parameter and compute dtype (norms and softmax always run in float32).
    mesh: optional ``jax.sharding.Mesh`` with axes ``data`` and/or ``model`` (Auto axis
      types, see :func:`~.sharding.make_mesh`); parameters are placed by
      :data:`~.sharding.RULES`. None: everything on the default device.
    remat: what the backward pass keeps of each block (see
      :data:`~.model.REMAT_POLICIES`; ``model.remat`` can be changed later).

  Returns:
    The model; ``model(ids, mask)`` gives float32 logits (B, T, V).

  Raises:
    FileNotFoundError: no such folder, or no ``config.json`` in it.
    CheckpointError: unsupported ``model_type``; missing, unexpected or wrong-shaped tensors;
      an unreadable or truncated safetensors file. The message names the key or file.
    ValueError: a mesh without ``data``/``model`` axes or with Explicit axis types.

  Example:
    >>> import jax.numpy as jnp
    >>> model = load_model("../shared/data/hf_tiny/llama")  # doctest: +SKIP
    >>> model(jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)).shape  # doctest: +SKIP
    (1, 4, 512)
  """
  path = pathlib.Path(path)
  arch, raw, source = open_checkpoint(path)
  sharding.check_mesh(mesh)
  # Tree mode: graph-mode eval_shape would read the logical out_sharding names as axes of an
  # enclosing jax.set_mesh mesh; placement by the rules happens below instead.
  abstract = nnx.eval_shape(
    lambda: CausalLM(arch, dtype=dtype, remat=remat, rngs=nnx.Rngs(0)), graph=False
  )
  entries = key_table(abstract)
  graphdef, state = nnx.split(abstract)
  variables = dict(nnx.to_flat_state(state))
  values = nnx.to_pure_dict(state)
  with source as files:
    needed = {k for e in entries for k in e.keys}
    missing = sorted(needed - set(files.keys))
    if missing:
      raise CheckpointError(f"{path} lacks tensor(s) the model needs: {_listing(missing)}")
    tied_copy = "lm_head.weight" if arch.tie_embeddings else None
    unexpected = sorted(
      k for k in files.keys if k not in needed and k != tied_copy and not IGNORED_KEYS.match(k)
    )
    if unexpected:
      raise CheckpointError(
        f"{path} has tensor(s) a {arch.model_type} model with this config does not use: "
        f"{_listing(unexpected)}"
      )
    for e in entries:
      value = _read_entry(files, e, jnp.dtype(dtype))
      target = sharding.variable_sharding(variables[e.path], mesh)
      _set(values, e.path, jax.device_put(value, target))
      del value
  nnx.replace_by_pure_dict(state, values)
  model = nnx.merge(graphdef, state)
  model.hf_config = json.dumps(raw)  # kept for save_model: unknown keys survive the round trip
  return model


def save_model(model: CausalLM, path: str | pathlib.Path, *, max_shard_bytes: int = 5 * 2**30):
  """Writes ``model`` as an HF-format folder: ``config.json`` plus safetensors.

  Keys and layouts are HF's (``nn.Linear`` weights ``(out, in)``, no ``lm_head.weight`` when
  tied), so :func:`load_model` and transformers' ``from_pretrained`` read it; weights keep the
  model's dtype. LoRA adapters are merged into a copy first (:func:`~.lora.merge_lora`). A model
  over ``max_shard_bytes`` is split into shards with ``model.safetensors.index.json``; one
  shard's tensors are on the host at a time.

  Example:
    >>> save_model(load_model("../shared/data/hf_tiny/phi"), "/tmp/phi_copy")  # doctest: +SKIP
  """
  path = pathlib.Path(path)
  raw, shapes, tensors = hf_tensors(model)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
  itemsize = jnp.dtype(model.dtype).itemsize
  sizes = [(key, int(np.prod(shape)) * itemsize) for key, shape in shapes]
  write_folder(path, tensors, sizes=sizes, max_shard_bytes=max_shard_bytes)


def hf_tensors(model: CausalLM) -> tuple[dict, list[tuple[str, tuple[int, ...]]], Iterator]:
  """What an export writes: the ``config.json`` dict, ``(key, HF shape)`` per tensor, and the
  ``(key, array)`` pairs in HF's layout and the model's dtype, produced lazily in that order.

  LoRA adapters are merged into a copy first. The pairs are a generator: each tensor reaches
  the host when the writer asks for it.

  Example:
    >>> model = load_model("../shared/data/hf_tiny/llama")  # doctest: +SKIP
    >>> raw, shapes, tensors = hf_tensors(model)  # doctest: +SKIP
    >>> shapes[0], next(tensors)[1].shape  # doctest: +SKIP
    (('model.embed_tokens.weight', (512, 64)), (512, 64))
  """
  from experiments.models.hf.lora import has_lora, merge_lora

  if has_lora(model):
    model = merge_lora(model)
  dtype_name = jnp.dtype(model.dtype).name
  if hasattr(model, "hf_config"):
    raw = json.loads(model.hf_config)
    raw["dtype"] = dtype_name
    if "torch_dtype" in raw:
      raw["torch_dtype"] = dtype_name
  else:
    raw = config_dict(model.arch, dtype_name)
  state = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  entries = key_table(model)
  shapes = [(key, e.hf_shape) for e in entries for key in e.keys]

  def tensors():  # one parameter kind on the host at a time (a stacked kind: all its layers)
    for e in entries:
      value = np.asarray(jax.device_get(state[e.path].get_value()))
      if e.num_layers is None:
        yield e.key, e.to_hf(value)
      else:
        yield from ((key, e.to_hf(value[i])) for i, key in enumerate(e.keys))

  return raw, shapes, tensors()


def load_tokenizer(path: str | pathlib.Path) -> Tokenizer:
  """The checkpoint's ``tokenizer.json`` as a ``tokenizers.Tokenizer`` (post-processor included).

  ``tok.encode(text).ids`` adds what the checkpoint's post-processor adds (e.g. BOS);
  ``add_special_tokens=False`` leaves it out. For a GGUF file (or a folder holding one) the
  tokenizer is built from its metadata (:mod:`.gguf_tokenizer`).

  Example:
    >>> tok = load_tokenizer("../shared/data/hf_tiny/llama")  # doctest: +SKIP
    >>> tok.encode("Hi").ids[0]  # doctest: +SKIP
    1
  """
  gguf_file = find_gguf(path)
  if gguf_file is not None:
    with GGUFFile(gguf_file) as source:
      return source.tokenizer()
  path = pathlib.Path(path)
  file = path / "tokenizer.json"
  if not file.is_file():
    raise FileNotFoundError(f"{str(path)!r} has no tokenizer.json")
  return Tokenizer.from_file(str(file))


def chat_template(path: str | pathlib.Path) -> str | None:
  """The checkpoint's chat template (a Jinja string), or None when it has none.

  HF folders: ``chat_template.jinja``, else ``tokenizer_config.json``'s ``chat_template``;
  GGUF: ``tokenizer.chat_template``.

  Example:
    >>> chat_template("../shared/data/hf_tiny/llama") is None  # doctest: +SKIP
    True
  """
  gguf_file = find_gguf(path)
  if gguf_file is not None:
    with GGUFFile(gguf_file) as source:
      return source.chat_template()
  return read_chat_template(path)
