"""The documentation: the site builds, its code runs, its links resolve, its commands parse.

* The Sphinx site (``docs/``) builds with warnings as errors, as
  ``python -m sphinx -W -b html docs docs/_build/html`` does; that covers the API
  reference (every public name, ``docs/ext/coverage_check.py``) and every link
  between pages.
* Every ``python`` block of a docs page runs, in order, in one namespace per page.
* Every relative link and image of the README and the docs pages points at a file
  that exists, and a ``#fragment`` at a heading of that page.
* Every ``python -m ...`` command printed in the README or the docs parses with the
  job's own flags (``experiments``: its argparse parser, loss and optimizer names;
  ``benchmarks`` and ``examples``: the flags its source defines), and every test file
  named in a ``pytest`` command exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_DIRS = {"_build", "_generated", "ext", "_templates"}
PAGES = sorted(p for p in DOCS.rglob("*.md") if not SKIP_DIRS & set(p.relative_to(DOCS).parts[:-1]))
MARKDOWN = [ROOT / "README.md", *PAGES]
SPHINX = ("sphinx", "myst_parser", "sphinx_book_theme")


def rel(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT))


def fenced(text: str, lang: str) -> list[str]:
  """The bodies of the ```lang blocks of a Markdown text."""
  return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def prose(text: str) -> str:
  """The text without fenced blocks (links inside code are not links)."""
  return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


# -- the site -----------------------------------------------------------------


def test_site_builds_with_warnings_as_errors(tmp_path):
  missing = [m for m in SPHINX if importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[docs]')")
  out = tmp_path / "html"
  cmd = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "-d", str(tmp_path / "doctrees")]
  done = subprocess.run([*cmd, str(DOCS), str(out)], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-6000:]
  for page in ("index", "getting_started", "results", "api/index", "guides/sharding"):
    assert (out / f"{page}.html").is_file(), page
  assert (out / "api" / "_generated" / "dualoptim_jax.dualoptim_plus.html").is_file()
  assert (out / "api" / "_generated" / "dualoptim_jax.unlearning.npo_loss.html").is_file()


def test_every_public_name_is_in_an_api_group():
  """The coverage check's input, without Sphinx: each name appears in a docs/api file."""
  sys.path.insert(0, str(DOCS / "ext"))
  try:
    coverage_check = importlib.import_module("coverage_check")
  finally:
    sys.path.remove(str(DOCS / "ext"))
  objects, modules = coverage_check.public_names()
  api = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.*")))
  listed = set(re.findall(r"^\s+(\w+)$", api, re.M)) | set(re.findall(r"data:: (\w+)", api))
  assert {n.rsplit(".", 1)[1] for n in objects} <= listed
  assert {m for m in modules if m != "dualoptim_jax"} <= set(re.findall(r"module:: (\S+)", api))


# -- code -----------------------------------------------------------------------

RUNNABLE = [p for p in PAGES if fenced(p.read_text(), "python")]


@pytest.mark.parametrize("page", RUNNABLE, ids=[rel(p) for p in RUNNABLE])
def test_python_blocks_run(page, capsys):
  # A reader's script runs with JAX's default promotion rules, not the suite's strict ones.
  namespace: dict = {}
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    for block in fenced(page.read_text(), "python"):
      exec(compile(block, rel(page), "exec"), namespace)
  assert capsys.readouterr().out, f"{rel(page)}'s examples print nothing"


# -- links ----------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")


def anchors(page: pathlib.Path) -> set[str]:
  """The heading anchors MyST makes (``myst_heading_anchors``) and the explicit labels."""
  text = prose(page.read_text())
  out = set(re.findall(r"^\((\S+)\)=$", text, re.M))
  for title in re.findall(r"^#{1,6} (.+)$", text, re.M):
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "")
    out.add(re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-"))
  return out


@pytest.mark.parametrize("page", MARKDOWN, ids=[rel(p) for p in MARKDOWN])
def test_relative_links_resolve(page):
  bad = []
  for target in LINK.findall(prose(page.read_text())):
    if re.match(r"[a-z]+:", target):
      continue  # http:, https:, mailto:
    path, _, fragment = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists():
      bad.append(f"{target}: no such file")
    elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
      bad.append(f"{target}: no heading #{fragment} in {rel(dest)}")
  assert not bad, f"{rel(page)}: " + "; ".join(bad)


# -- commands -------------------------------------------------------------------


def commands(text: str) -> list[list[str]]:
  """``python ...`` commands of the bash blocks and inline code spans, as argv lists."""
  found = []
  for block in fenced(text, "bash"):
    block = block.replace("\\\n", " ")
    for line in block.splitlines():
      line = re.sub(r"(^|\s)#.*$", "", line)
      found += re.split(r"&&|;|&", line)
  found += re.findall(r"`(python (?:-m )?\S[^`]*)`", prose(text))
  argvs = [shlex.split(" ".join(c.split())) for c in found]
  return [a for a in argvs if a and a[0] == "python"]


def source_of(module: str) -> str:
  return (ROOT / (module.replace(".", "/") + ".py")).read_text()


def check_experiment(module: str, argv: list[str]) -> None:
  """Parses ``argv`` with the job's parser; checks loss and optimizer names too."""
  job = importlib.import_module(module)
  if argv == ["--help"]:
    return
  try:
    args = job.parser().parse_args(argv)
  except SystemExit:
    raise AssertionError(f"python -m {module} {shlex.join(argv)}: bad flags") from None
  if module == "experiments.tofu":
    from experiments import cli
    from experiments.loops import losses, optimizers

    for item in args.loss or []:
      for name in cli.name_list(item):
        losses.parse_loss(name)
    for name in cli.name_list(args.optimizers):
      assert optimizers.available(name), name
  else:  # the multi-objective jobs
    from experiments.loops import multiobjective

    for name in args.optimizers:
      assert multiobjective.available(name), name


def check_command(argv: list[str]) -> None:
  if argv[1] == "-m":
    module, rest = argv[2], argv[3:]
  else:
    module, rest = argv[1].removesuffix(".py").replace("/", "."), argv[2:]
  if module == "pytest":
    for arg in rest:
      if arg.startswith("tests/"):
        pattern = arg.split("::")[0]
        assert list(ROOT.glob(pattern)), f"no test file {pattern}"
  elif module.startswith("experiments.") and hasattr(importlib.import_module(module), "parser"):
    check_experiment(module, rest)
  elif module.split(".")[0] in ("benchmarks", "examples", "experiments"):
    source = source_of(module)
    for flag in (a.split("=")[0] for a in rest if a.startswith("--")):
      assert f'"{flag}"' in source, f"{module} has no flag {flag}"
  else:
    assert module in ("sphinx",), f"unknown command python -m {module}"


@pytest.mark.parametrize("page", MARKDOWN, ids=[rel(p) for p in MARKDOWN])
def test_printed_commands_parse(page):
  for argv in commands(page.read_text()):
    check_command(argv)
