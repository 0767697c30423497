"""The model a TOFU job trains: the in-house decoder or an HF-format checkpoint, ready to train.

:func:`prepare` turns :class:`ModelOptions` (the job's model flags) into a
:class:`ModelSetup`: tokenizer and encoder, the split model (``graphdef``, the
trained ``params`` and the ``frozen`` rest), where batches go on a mesh, and
how to evaluate and export what the loops return.

- In-house (the default): a fresh :class:`~experiments.models.decoder.DecoderLM`
  with the local BPE, float32, one device; exactly the job's original model.
- A checkpoint (``--model`` or ``--finetuned``): loaded in ``--param-dtype`` onto
  the ``--mesh``, with its own tokenizer and special ids and the chosen prompt
  format; with ``--lora-rank`` only the adapters are trained (``params``) and the
  checkpoint's weights are ``frozen``.

Example:
  >>> import jax.numpy as jnp
  >>> from experiments.data.tokenizer import train_tokenizer
  >>> m = in_house(train_tokenizer(["a b c"], 300), "tiny", 32)
  >>> m.description
  'tiny: 18,688 parameters, vocab 261, max_len 32'
  >>> m.apply(m.params, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)).shape
  (1, 4, 261)
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tokenizers import Tokenizer

from experiments import hf
from experiments.data.batching import Encoder
from experiments.data.prompts import DEFAULT, prompt_format
from experiments.data.tokenizer import checkpoint_ids
from experiments.loops import optimizers
from experiments.models import decoder, make_apply

# Files beside the weights that make an exported folder usable on its own.
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
  "tokenizer.model",
)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """The job's model flags (defaults: the in-house model).

  Attributes:
    model: ``--model``: an HF-format folder to fine-tune (then unlearn).
    finetuned: ``--finetuned``: an HF-format folder already fine-tuned on the data.
    oracle: ``--oracle``: its retain-only counterpart (with ``finetuned``).
    prompt_format: ``--prompt-format``: a name of :data:`~experiments.data.prompts.FORMATS`
      or a template.
    param_dtype: ``--param-dtype``: ``float32`` or ``bfloat16`` (moments stay float32).
    lora_rank: ``--lora-rank``: train rank-R adapters only (0: every parameter).
    mesh: ``--mesh``: ``(data, model)`` device counts, or None for one device.
    save_model: ``--save-model``: folder for the models in HF format (the unlearned ones, and
      the fine-tuned and oracle models when trained here).
  """

  model: str | None = None
  finetuned: str | None = None
  oracle: str | None = None
  prompt_format: str = DEFAULT
  param_dtype: str = "float32"
  lora_rank: int = 0
  mesh: tuple[int, int] | None = None
  save_model: str | None = None

  @property
  def checkpoint(self) -> pathlib.Path | None:
    """The folder the model (and its tokenizer) comes from, or None for the in-house model."""
    path = self.model or self.finetuned
    return None if path is None else pathlib.Path(path)

  def key_parts(self) -> list:
    """What the model adds to the checkpoint-cache key ([] for the in-house defaults).

    A checkpoint's identity is its resolved path plus the size and modification
    time of every file in it, so replacing the weights invalidates the cache.
    """
    parts: list = []
    if self.prompt_format != DEFAULT:
      parts.append(["prompt", prompt_format(self.prompt_format).template])
    if self.checkpoint is None:
      return parts
    folders = [p for p in (self.model, self.finetuned, self.oracle) if p is not None]
    ids = [_identity(pathlib.Path(p)) for p in folders]
    return [*parts, ["hf", ids, self.param_dtype, self.lora_rank]]


def _identity(folder: pathlib.Path) -> str:
  stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir())
  blob = repr((str(folder.resolve()), stats)).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


@dataclasses.dataclass
class ModelSetup:
  """What the pipeline needs of its model.

  Attributes:
    tok: the tokenizer.
    encoder: tokenises QA pairs with the model's special ids and prompt format.
    graphdef: the model's ``nnx`` graph definition.
    params: the trained state at the start (every parameter, or LoRA adapters).
    frozen: the state merged in but never trained (a LoRA model's base), or None.
    vocab_size: the model's vocabulary.
    description: one line for the log.
    info: what ``results.json`` records about the model ({} for the in-house model).
    mesh: the device mesh, or None.
    finetuned: ``(params, [])`` of ``--finetuned`` (fine-tuning skipped), else None.
    oracle: ``(state, [])`` of ``--oracle`` (a full state), else None.
    source: the checkpoint folder (tokenizer files for export), or None.
  """

  tok: Tokenizer
  encoder: Encoder
  graphdef: Any
  params: Any
  frozen: Any
  vocab_size: int
  description: str
  info: dict = dataclasses.field(default_factory=dict)
  mesh: jax.sharding.Mesh | None = None
  finetuned: tuple | None = None
  oracle: tuple | None = None
  source: pathlib.Path | None = None

  @property
  def apply(self) -> Callable:
    """``apply(params, ids, mask, frozen=None) -> logits`` (see ``models.make_apply``)."""
    return make_apply(self.graphdef)

  @property
  def n_params(self) -> int:
    """Parameters of the whole model (base and adapters)."""
    return sum(int(x.size) for x in jax.tree.leaves(self.full(self.params)))

  def full(self, state):
    """The whole model state for evaluation and export.

    ``params``-shaped states (what the loops train) are merged with ``frozen``;
    a state that already holds a base (``--oracle``'s) is returned as is.
    """
    if self.frozen is None or len(jax.tree.leaves(state)) > len(jax.tree.leaves(self.params)):
      return state
    return nnx.merge_state(state, self.frozen)

  def place_batch(self, batch):
    """``batch`` split over the mesh's ``data`` axis (as is without a mesh)."""
    if self.mesh is None:
      return batch
    return jax.device_put(batch, NamedSharding(self.mesh, P("data")))

  def placed(self, batches):
    """An unlearning batch source whose batches :meth:`place_batch` places."""
    return batches if self.mesh is None else _Placed(batches, self.place_batch)

  def export(self, params, path: str | pathlib.Path) -> None:
    """Writes the model with ``params`` as an HF-format folder (adapters merged), tokenizer too."""
    path = pathlib.Path(path)
    hf.save_model(nnx.merge(self.graphdef, self.full(params)), path)
    for name in TOKENIZER_FILES:
      if self.source is not None and (self.source / name).is_file():
        shutil.copyfile(self.source / name, path / name)


class _Placed:
  """Wraps a batch source (``next(objective, ...)``) so every batch is placed on the mesh."""

  def __init__(self, batches, place):
    self.batches, self.place = batches, place

  def next(self, objective, *args):
    return self.place(self.batches.next(objective, *args))


def in_house(tok: Tokenizer, size: str, max_len: int, options=ModelOptions()) -> ModelSetup:
  """The in-house decoder of ``size`` (fresh weights, seed 0) with the local tokenizer."""
  cfg = decoder.config_for(size, tok.get_vocab_size(), max_len)
  graphdef, params = nnx.split(decoder.DecoderLM(cfg, nnx.Rngs(0)))
  n = sum(int(x.size) for x in jax.tree.leaves(params))
  encoder = Encoder(tok, max_len, prompt=prompt_format(options.prompt_format))
  desc = f"{size}: {n:,} parameters, vocab {cfg.vocab_size}, max_len {max_len}"
  return ModelSetup(tok, encoder, graphdef, params, None, cfg.vocab_size, desc)


def _split(model, lora: bool):
  """(graphdef, trained, frozen): adapters and the rest with LoRA, else every parameter."""
  if lora:
    return nnx.split(model, nnx.LoRAParam, ...)
  graphdef, params = nnx.split(model)
  return graphdef, params, None


def _load(path: pathlib.Path, options: ModelOptions, mesh) -> nnx.Module:
  model = hf.load_model(path, dtype=jnp.dtype(options.param_dtype), mesh=mesh)
  return hf.add_lora(model, options.lora_rank) if options.lora_rank else model


def mesh_of(options: ModelOptions) -> jax.sharding.Mesh | None:
  """The ``(data, model)`` mesh ``--mesh`` asks for, on the first ``data * model`` devices."""
  if options.mesh is None:
    return None
  data, model = options.mesh
  return hf.make_mesh(data, model, devices=jax.devices()[: data * model])


def from_checkpoint(options: ModelOptions, max_len: int) -> ModelSetup:
  """The checkpoint of ``options`` (``--model`` or ``--finetuned`` + ``--oracle``), ready to train.

  Raises:
    ValueError: the tokenizer's vocabulary exceeds the model's, or ``--oracle``
      has another architecture than ``--finetuned``.
  """
  path, mesh = options.checkpoint, mesh_of(options)
  model = _load(path, options, mesh)
  arch = model.arch
  tok = hf.load_tokenizer(path)
  if tok.get_vocab_size() > arch.vocab_size:
    raise ValueError(
      f"{path}: tokenizer.json has {tok.get_vocab_size()} tokens, the model {arch.vocab_size}"
    )
  specials = checkpoint_ids(tok, arch.bos_token_id, arch.eos_token_id, arch.pad_token_id, path)
  fmt = prompt_format(options.prompt_format)
  encoder = Encoder(tok, max_len, specials, fmt)
  graphdef, params, frozen = _split(model, options.lora_rank > 0)
  setup = ModelSetup(tok, encoder, graphdef, params, frozen, arch.vocab_size, "", mesh=mesh)
  setup.source = path
  if options.finetuned is not None:
    oracle = _load(pathlib.Path(options.oracle), options, mesh)
    if oracle.arch != arch:
      raise ValueError(f"--oracle {options.oracle} is not the same architecture as --finetuned")
    setup.finetuned, setup.oracle = (params, []), (nnx.state(oracle), [])
  n, trained = setup.n_params, sum(int(x.size) for x in jax.tree.leaves(params))
  lora = f", LoRA rank {options.lora_rank} ({trained:,} trained)" if options.lora_rank else ""
  where = "" if mesh is None else f", mesh data:{options.mesh[0]},model:{options.mesh[1]}"
  setup.description = (
    f"{arch.model_type} from {path}: {n:,} parameters ({options.param_dtype}{lora}{where}), "
    f"vocab {arch.vocab_size}, max_len {max_len}, prompt format {fmt.name}, "
    f"BOS {'added' if specials.add_bos else 'not added'}, EOS {list(specials.eos)}"
  )
  setup.info = {
    "source": str(path),
    "oracle": options.oracle,
    "model_type": arch.model_type,
    "param_dtype": options.param_dtype,
    "lora_rank": options.lora_rank,
    "mesh": None if mesh is None else dict(mesh.shape),
    "prompt_format": fmt.template,
    "special_ids": dataclasses.asdict(specials),
    "n_params": n,
    "n_trained": trained,
  }
  return setup


def state_bytes(setup: ModelSetup, optimizer_names, recipe: optimizers.Recipe) -> dict:
  """Optimizer-state bytes per optimizer: for what is trained, and for every parameter.

  Computed from shapes only (nothing is allocated). With LoRA the two differ:
  ``trained`` is what the run holds, ``full`` what full fine-tuning would.

  Example:
    >>> from experiments.data.tokenizer import train_tokenizer
    >>> m = in_house(train_tokenizer(["a b c"], 300), "tiny", 32)
    >>> state_bytes(m, ["adamw"], optimizers.Recipe())
    {'adamw': {'trained': 149512, 'full': 149512}}
  """
  whole = nnx.state(nnx.merge(setup.graphdef, setup.full(setup.params)), hf.BASE)
  return {
    name: {
      "trained": optimizers.planned_state_bytes(name, recipe, setup.params),
      "full": optimizers.planned_state_bytes(name, recipe, whole),
    }
    for name in optimizer_names
  }


def prepare(options: ModelOptions, max_len: int, tokenizer: Callable, size: str) -> ModelSetup:
  """The job's model: :func:`from_checkpoint` when ``options`` name one, else :func:`in_house`.

  ``tokenizer()`` gives the in-house tokenizer (trained or read from the cache);
  it is not called for a checkpoint, which brings its own.
  """
  if options.checkpoint is not None:
    return from_checkpoint(options, max_len)
  return in_house(tokenizer(), size, max_len, options)
