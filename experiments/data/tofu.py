"""Real TOFU from a local folder (the layout of ``../shared/data/tofu/``) or the HF hub.

Files are JSON Lines despite the ``.json`` ending. The forget set of a task is
the rows of ``{split}_perturbed.json`` with that ``task_id``; the retain set is
every other question of ``forget01.json`` + ``retain90.json`` (the 4000 pairs).

On a CPU a 1M-parameter model cannot memorise 3,600+ long answers in minutes,
so ``retain_limit`` subsamples the retain set for fine-tuning and unlearning:
the first ``retain_limit`` rows of ``retain_perturbed.json`` (whole authors, 20
rows each, all part of the retain set), which also serve as the retain
evaluation set. ``retain_limit=None`` keeps the whole retain set.

The membership-inference holdout (QA no model trains on) is then the last rows
of ``retain90.json``: authors outside the subsample (none with ``retain_limit=None``).
"""

from __future__ import annotations

import json
import os
import pathlib

from experiments.data.corpus import QA, Corpus, DataError, check_split

HF_REPO = "locuslab/TOFU"


def read_jsonl(path: pathlib.Path, required: tuple[str, ...]) -> list[dict]:
  """Rows of a JSON Lines file, each checked for ``required`` keys.

  Raises:
    DataError: the file is missing, a line is not a JSON object, or a key is missing.
  """
  if not path.is_file():
    raise DataError(f"missing data file {path}")
  rows = []
  with path.open(encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise DataError(f"{path}:{i}: expected a JSON object per line")
      for key in required:
        if key not in row:
          raise DataError(f"{path}:{i}: missing key {key!r}")
      rows.append(row)
  if not rows:
    raise DataError(f"{path}: no rows")
  return rows


def _qa(row: dict, path: pathlib.Path, short: bool = False) -> QA:
  perturbed = row.get("perturbed_answer", [])
  if isinstance(perturbed, str):
    perturbed = [perturbed]
  if not isinstance(perturbed, list) or not all(isinstance(p, str) for p in perturbed):
    raise DataError(f"{path}: 'perturbed_answer' must be a list of strings")
  return QA(
    question=str(row["question"]),
    answer=str(row["answer"]),
    paraphrased_answer=None if short else row.get("paraphrased_answer"),
    perturbed_answers=tuple(perturbed),
  )


def load_local(
  folder: str | os.PathLike,
  split: str = "forget05",
  *,
  task_id: int = 1,
  retain_limit: int | None = 100,
  utility_limit: int | None = 40,
  idk_fallback: tuple[str, ...] | None = None,
  holdout_size: int | None = None,
) -> Corpus:
  """Reads TOFU from ``folder``.

  Args:
    folder: a directory with the TOFU files.
    split: ``forget01``, ``forget05`` or ``forget10`` (needs ``{split}_perturbed.json``).
    task_id: the forget task (TOFU's ``task_id``; the benchmark uses 1).
    retain_limit: retain rows kept (see the module docstring), or None for all.
    utility_limit: rows kept from each utility set, or None for all.
    idk_fallback: refusals used when ``idontknow.txt`` is absent (the HF copy
      has none); None makes its absence an error.
    holdout_size: QA in the membership-inference holdout (default: as many as the
      forget set, at least 40 = two authors), the last untrained rows of the retain pool.

  Returns:
    A :class:`~experiments.data.Corpus`.

  Raises:
    DataError: a file is missing or malformed, or the task does not exist.
  """
  check_split(split)
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise DataError(f"data path {root} is not a directory")
  need = ("question", "answer")
  pert = need + ("paraphrased_answer", "perturbed_answer")
  split_path = root / f"{split}_perturbed.json"
  split_rows = read_jsonl(split_path, pert + ("task_id",))
  forget_rows = [r for r in split_rows if str(r["task_id"]) == str(task_id)]
  if not forget_rows:
    tasks = sorted({str(r["task_id"]) for r in split_rows}, key=lambda t: (len(t), t))
    raise DataError(f"{split_path}: no rows with task_id {task_id} (tasks: {', '.join(tasks)})")
  forget = tuple(_qa(r, split_path) for r in forget_rows)
  forget_qs = {q.question for q in forget}

  all_rows = read_jsonl(root / "forget01.json", need) + read_jsonl(root / "retain90.json", need)
  retain_all = [QA(str(r["question"]), str(r["answer"])) for r in all_rows]
  retain_all = [q for q in retain_all if q.question not in forget_qs]
  rp_path = root / "retain_perturbed.json"
  retain_eval = [_qa(r, rp_path) for r in read_jsonl(rp_path, pert)]
  retain_eval = [q for q in retain_eval if q.question not in forget_qs]
  if retain_limit is not None:
    retain_eval = retain_eval[:retain_limit]
    retain = tuple(QA(q.question, q.answer) for q in retain_eval)
  else:
    retain = tuple(retain_all)
  # Holdout: the last rows of the pool (whole authors at the end of retain90.json) that the
  # subsample leaves out; no model ever trains on them.
  trained = {q.question for q in retain}
  untrained = [q for q in retain_all if q.question not in trained]
  n_hold = max(len(forget), 40) if holdout_size is None else holdout_size
  holdout = tuple(untrained[-n_hold:]) if n_hold > 0 else ()

  def utility(name: str) -> tuple[QA, ...]:
    path = root / name
    rows = [_qa(r, path, short=True) for r in read_jsonl(path, need + ("perturbed_answer",))]
    return tuple(rows[:utility_limit] if utility_limit is not None else rows)

  idk_path = root / "idontknow.txt"
  if idk_path.is_file():
    idk = tuple(s.strip() for s in idk_path.read_text(encoding="utf-8").splitlines() if s.strip())
  elif idk_fallback:
    idk = tuple(idk_fallback)
  else:
    raise DataError(f"missing data file {idk_path}")
  if not idk:
    raise DataError(f"{idk_path}: no refusal sentences")
  sub = "all" if retain_limit is None else f"first {len(retain)} rows of retain_perturbed.json"
  return Corpus(
    name=f"TOFU {split} task {task_id}",
    forget=forget,
    retain=retain,
    retain_eval=tuple(retain_eval),
    real_authors=utility("real_authors_perturbed.json"),
    world_facts=utility("world_facts_perturbed.json"),
    idk=idk,
    notes=(
      f"TOFU from {root}: forget = {split} task {task_id} ({len(forget)} QA); retain for "
      f"fine-tuning/unlearning = {sub} (of {len(retain_all)}); utility sets: "
      f"{'all' if utility_limit is None else f'first {utility_limit}'} rows, learned in fine-tuning"
      f"; MIA holdout = {len(holdout)} untrained rows at the end of retain90.json"
    ),
    holdout=holdout,
  )


def load_hf(split: str = "forget05", **kwargs) -> Corpus:
  """Downloads the TOFU files from the HF hub (needs network), then :func:`load_local`."""
  try:
    from huggingface_hub import snapshot_download
  except ImportError:
    raise DataError(
      "--data hf needs the huggingface_hub package (pip install huggingface_hub)"
    ) from None
  try:
    folder = snapshot_download(HF_REPO, repo_type="dataset", allow_patterns=["*.json", "*.txt"])
  except Exception as e:  # noqa: BLE001 - offline errors come in many types
    raise DataError(
      f"could not download {HF_REPO} from the HF hub ({type(e).__name__}); "
      "pass a local folder with --data PATH instead"
    ) from None
  from experiments.data.synthetic import IDK

  return load_local(folder, split, idk_fallback=IDK, **kwargs)
