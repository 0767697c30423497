"""The experiments' checkpoint cache: resume, and damaged steps reported, set aside, never used."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.data import synthetic
from experiments.data import tokenizer as toklib
from experiments.data.batching import Encoder
from experiments.loops.checkpoint import Checkpoints
from experiments.loops.finetune import FineTuneConfig, fine_tune
from experiments.models import make_apply
from experiments.models.decoder import DecoderLM, config_for

# A damaged step makes orbax's abandoned reads raise when they are collected; the cache
# captures that output (see experiments.loops.checkpoint), pytest reports it as a warning.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _damage(step_dir: pathlib.Path) -> None:
  """Truncates the largest array file of the step's params (as a crashed disk would)."""
  files = sorted((step_dir / "params").rglob("*"), key=lambda f: f.stat().st_size)
  biggest = [f for f in files if f.is_file()][-1]
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def _params():
  return {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7, "b": jnp.ones(4, jnp.float32)}


def test_round_trip_and_latest(tmp_path):
  params, tx = _params(), optax.adam(1e-3)
  ckpt = Checkpoints(tmp_path / "c")
  assert ckpt.latest() is None and ckpt.restore_latest(params, tx.init(params)) is None
  ckpt.save(3, params, tx.init(params))
  zeros = jax.tree.map(jnp.zeros_like, params)
  got, got_opt, step = ckpt.restore_latest(zeros, tx.init(zeros))
  assert step == 3 and bool(jnp.all(got["w"] == params["w"]))
  assert type(got_opt) is type(tx.init(params))


def test_damaged_latest_step_falls_back_and_is_kept_aside(tmp_path):
  params, tx = _params(), optax.adam(1e-3)
  warnings = []
  ckpt = Checkpoints(tmp_path, max_to_keep=3, warn=warnings.append)
  for step in (1, 2):
    ckpt.save(step, jax.tree.map(lambda x, s=step: x + s, params), tx.init(params))
  _damage(tmp_path / "2")
  got, _, step = ckpt.restore_latest(params, tx.init(params))
  assert step == 1 and bool(jnp.all(got["w"] == params["w"] + 1))
  assert len(warnings) == 1 and "step 2" in warnings[0] and "falling back to step 1" in warnings[0]
  assert ckpt.steps() == [1] and (tmp_path / "damaged-2").is_dir()  # kept, not deleted
  # The one line names the details file; orbax's own output is in it, not on the terminal.
  assert "restore_error.txt" in warnings[0]
  assert "is damaged" in (tmp_path / "damaged-2" / "restore_error.txt").read_text()
  # The step can be written again, and a damaged only step means "retrain".
  ckpt.save(2, params, tx.init(params))
  _damage(tmp_path / "1")
  _damage(tmp_path / "2")
  assert ckpt.restore_latest(params, tx.init(params)) is None
  assert "no earlier step: retraining" in warnings[-1]
  assert {p.name for p in tmp_path.iterdir()} >= {"damaged-1", "damaged-2", "damaged-2-2"}


@pytest.fixture(scope="module")
def tiny_job():
  corpus = synthetic.generate("forget01", n_authors=4)
  tok = toklib.train_tokenizer(corpus.texts(), 300)
  graphdef, params = nnx.split(DecoderLM(config_for("tiny", 300, 64), nnx.Rngs(0)))
  cfg = FineTuneConfig(epochs=3, batch_size=16, save_every=1)
  data = corpus.full_train()[:48]
  return make_apply(graphdef), params, data, Encoder(tok, 64), cfg


def test_fine_tune_resumes_past_a_damaged_step_to_the_same_weights(tiny_job, tmp_path, capsys):
  apply, params, data, encoder, cfg = tiny_job
  straight, _ = fine_tune(apply, params, data, encoder, cfg, tmp_path / "a")
  fine_tune(apply, params, data, encoder, cfg, tmp_path / "b")
  _damage(tmp_path / "b" / "3")
  resumed, history = fine_tune(apply, params, data, encoder, cfg, tmp_path / "b")
  err = capsys.readouterr().err
  assert "step 3" in err and "falling back to step 2" in err and "Traceback" not in err
  assert len(history) == 1  # only the third epoch was trained again
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
