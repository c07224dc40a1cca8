"""The paper and proposal (cnn_jax/reports/paper/): runs collected and
checked, tables carrying summary.json's numbers, the compiled PDF (pdflatex,
when installed: .ci/run installs it), edited files kept, page-limit advice.

Built on the finished run folder in tests/fixtures/run_before_layout (MNIST,
bundled data): copies of it stand for the seeds of one setting.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cnn_jax.reports import report
from cnn_jax.reports import restored_run
from cnn_jax.reports.paper import assemble
from cnn_jax.reports.paper import collect
from cnn_jax.reports.paper import compile as compile_lib
from cnn_jax.reports.paper import latex
from cnn_jax.reports.paper import proposal
from cnn_jax.reports.paper import tables
from tests.conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "fixtures", "run_before_layout")
needs_latex = pytest.mark.skipif(
    bool(compile_lib.tools_missing()),
    reason=f"{compile_lib.tools_missing()} (.ci/run installs TeX Live)")


def _copy_run(folder, seed, accuracy=None, status="finished", lr=None):
  """The fixture run copied to `folder` with its summary's seed (and test
  accuracy, status, learning rate) changed."""
  shutil.copytree(FIXTURE, folder)
  path = os.path.join(folder, "summary.json")
  with open(path, encoding="utf-8") as f:
    summary = json.load(f)
  summary["config"]["seed"] = seed
  summary["status"] = status
  if accuracy is not None:
    summary["test_accuracy"] = accuracy
    summary["test_metrics"]["accuracy"] = accuracy
  if lr is not None:
    summary["config"]["optim"]["learning_rate"] = lr
  with open(path, "w", encoding="utf-8") as f:
    json.dump(summary, f)
  return str(folder), summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{'single': [summary], 'seeds': [summary, summary]} and the specs."""
  root = tmp_path_factory.mktemp("paper_runs")
  single = _copy_run(root / "single", 0)
  seed0 = _copy_run(root / "seeds_0", 0, accuracy=0.2059)
  seed1 = _copy_run(root / "seeds_1", 1, accuracy=0.2311)
  specs = [("one run", single[0]), ("two seeds", str(root / "seeds_*"))]
  return specs, {"one run": [single[1]], "two seeds": [seed0[1], seed1[1]]}


def test_tables_carry_the_numbers_of_summary_json(runs, tmp_path):
  specs, summaries = runs
  result = assemble.write_paper(specs, str(tmp_path / "paper"),
                                compile_pdf=False)
  rows = {r[0]: r for r in latex.read_tabular(
      tmp_path / "paper" / "tables" / "results.tex")}
  assert set(rows) == {"one run", "two seeds"}
  # One run: the Wilson interval over its 10,000 test examples.
  one = summaries["one run"][0]
  low, high = report.wilson_interval(round(one["test_accuracy"] * 10000),
                                     10000)
  assert rows["one run"][2:] == [
      f"{100 * one['test_accuracy']:.2f}",
      f"[{100 * low:.2f}, {100 * high:.2f}]",
      f"{one['test_loss']:.4f}", "1"]
  assert rows["one run"][2] == "20.59"
  # Two seeds: mean and Student t (1 degree of freedom: 12.706).
  accuracies = [s["test_accuracy"] for s in summaries["two seeds"]]
  mean = sum(accuracies) / 2
  half = 12.706 * np.std(accuracies, ddof=1) / math.sqrt(2)
  assert rows["two seeds"][2:] == [
      f"{100 * mean:.2f}", f"[{100 * (mean - half):.2f}, "
      f"{100 * (mean + half):.2f}]",
      f"{summaries['two seeds'][0]['test_loss']:.4f}", "2"]
  # Parameters: counted from the checkpoint's arrays; the data's sizes.
  params = restored_run.load_run(FIXTURE).state.params
  count = sum(int(np.size(x)) for x in
              __import__("jax").tree.leaves(params))
  cost = {r[0]: r for r in latex.read_tabular(
      tmp_path / "paper" / "tables" / "cost.tex")}
  assert cost["one run"][1] == f"{count:,}"
  assert cost["one run"][4] == f"{one['wall_seconds']:.1f}"
  data = latex.read_tabular(tmp_path / "paper" / "tables" / "data.tex")
  assert data[0][2:5] == ["60,000", "--", "10,000"]
  # The best group's best run gave the confusion matrix and examples.
  names = {os.path.basename(f.name) for f in result.floats}
  assert names == {"learning_curves.pdf", "confusion.pdf", "examples.pdf",
                   "heatmaps.pdf", "results.tex", "data.tex", "cost.tex"}
  for name in ("learning_curves", "confusion", "examples", "heatmaps"):
    with open(tmp_path / "paper" / "figures" / f"{name}.pdf", "rb") as f:
      assert f.read(5) == b"%PDF-"
  bib = (tmp_path / "paper" / "references.bib").read_text()
  assert "lecun1998mnist" in bib and "loshchilov2019adamw" in bib


@needs_latex
def test_the_paper_compiles_with_the_numbers_in_the_pdf(runs, tmp_path):
  specs, summaries = runs
  result = assemble.write_paper(specs, str(tmp_path / "paper"),
                                title="A test paper")
  assert result.compiled.pdf, result.compiled.message
  assert 1 <= result.compiled.pages <= 3
  assert result.compiled.body_pages <= 4
  text = compile_lib.pdf_text(result.compiled.pdf)
  assert "A test paper" in text and "TODO" in text
  assert "20.59" in text and f"{100 * (0.2059 + 0.2311) / 2:.2f}" in text
  assert "Introduction" in text and "Discussion" in text
  assert "LeCun" in text  # the bibliography was built
  lines = result.lines()
  assert any("within the 4-page limit" in line for line in lines), lines


def test_an_edited_paper_tex_is_kept(runs, tmp_path):
  specs, _ = runs
  folder = tmp_path / "paper"
  # Text and tables only: no PDF, no re-evaluated checkpoint.
  write = lambda specs, **kw: assemble.write_paper(
      specs, str(folder), compile_pdf=False, predictions=False, **kw)
  write(specs[:1])
  paper = folder / "paper.tex"
  first = paper.read_text()
  assert latex.is_untouched(paper)
  # Unedited: regenerated (here with a title).
  write(specs[:1], title="Mine")
  assert "Mine" in paper.read_text()
  edited = paper.read_text().replace(r"\section{Introduction}",
                                     "\\section{Introduction}\nMy words.")
  paper.write_text(edited)
  result = write(specs)
  assert paper.read_text() == edited
  assert str(paper) in result.kept
  fresh = folder / "paper.tex.new"  # the regenerated text, for comparing
  assert latex.is_untouched(fresh) and "My words." not in fresh.read_text()
  # The generated parts still follow the runs.
  assert "two seeds" in (folder / "tables" / "results.tex").read_text()
  write(specs[:1], overwrite=True)
  assert paper.read_text() == first
  assert not (folder / "paper.tex.new").exists()


def test_bad_runs_are_errors_naming_them(tmp_path):
  with pytest.raises(collect.RunFolderError, match=r"x=.*nowhere: no such"):
    collect.collect([("x", str(tmp_path / "nowhere"))])
  (tmp_path / "empty").mkdir()
  with pytest.raises(collect.RunFolderError, match="run y=.*no summary.json"):
    collect.collect([("y", str(tmp_path / "empty"))])
  stopped, _ = _copy_run(tmp_path / "stopped", 0, status="preempted")
  with pytest.raises(collect.RunFolderError,
                     match=r"run z=.*stopped is not finished.*preempted"):
    collect.collect([("z", stopped)])
  a, _ = _copy_run(tmp_path / "a", 0)
  b, _ = _copy_run(tmp_path / "b", 1, lr=0.1)
  with pytest.raises(collect.RunFolderError,
                     match="'both' differ in more than the seed.*learning_rate"):
    collect.collect([("both", a), ("both", b)])
  with pytest.raises(collect.RunFolderError, match="not label=path"):
    collect.parse_runs_flag("runs/a")
  assert collect.parse_runs_flag("a=x, b = y*") == [("a", "x"), ("b", "y*")]


def test_a_sweep_gives_a_group_per_setting(tmp_path):
  for k, (seed, lr, status) in enumerate([
      (0, 0.003, "finished"), (1, 0.003, "finished"), (0, 0.1, "finished"),
      (1, 0.1, "diverged")]):
    _copy_run(tmp_path / "sweep" / "members" / str(k), seed, lr=lr,
              status=status)
  groups = collect.collect([("lr", str(tmp_path / "sweep"))])
  assert {g.label: len(g.runs) for g in groups} == {
      "lr (learning_rate=0.003)": 2, "lr (learning_rate=0.1)": 1}
  # The diverged member is left out, and named.
  assert [n for g in groups for n in g.left_out] == [
      f"lr={tmp_path / 'sweep'} member 3 (diverged)"]


def test_page_limit_advice_drops_lowest_priority_first():
  floats = [compile_lib.Float("tables/results.tex", "tab:results", 1.5, 9),
            compile_lib.Float("figures/examples.pdf", "fig:examples", 1.4, 1),
            compile_lib.Float("tables/cost.tex", "tab:cost", 1.2, 4),
            compile_lib.Float("figures/confusion.pdf", "fig:confusion", 3.2,
                              2)]
  over = compile_lib.CompileResult("p.pdf", 6, (5, 1, 4.0), "")
  assert compile_lib.overflow_inches(over.body_end) == pytest.approx(4.0)
  lines = compile_lib.advice(over, floats)
  assert "4.0 column-inches over the 4-page limit" in lines[1]
  # examples (1.4) + confusion (3.2) free 4.6 >= 4.0; nothing more.
  assert [l.split()[1] for l in lines[2:]] == ["figures/examples.pdf",
                                                "figures/confusion.pdf"]
  within = compile_lib.CompileResult("p.pdf", 4, (4, 1, 2.0), "")
  assert "within the 4-page limit (16.0 column-inches to spare)" in \
      compile_lib.advice(within, floats)[1]
  # Far over: no dropping of floats suffices, the text must shrink.
  far = compile_lib.CompileResult("p.pdf", 8, (7, 2, 3.4), "")
  line = compile_lib.advice(far, floats)[1]
  assert "48.4 column-inches over" in line and "shorten the text by ~41" \
      in line and line.endswith("figures/examples.pdf, figures/confusion.pdf"
                                ", tables/cost.tex, tables/results.tex")
  # A float LaTeX pushed past page 4 counts even when the text fits.
  late = compile_lib.CompileResult("p.pdf", 5, (4, 2, 8.0), "",
                                   float_pages={"fig:confusion": 5})
  assert late.body_pages == 5
  assert "3.2 column-inches over" in compile_lib.advice(late, floats)[1]


@needs_latex
def test_the_proposal_compiles_to_one_or_two_pages(tmp_path):
  from configs import mnist  # pylint: disable=g-import-not-at-top
  lines, compiled = proposal.write_proposal(mnist.get_config(),
                                            str(tmp_path / "proposal"),
                                            title="Digits")
  assert compiled.pdf, compiled.message
  assert 1 <= compiled.pages <= 2, lines
  text = compile_lib.pdf_text(compiled.pdf)
  # The majority class of the training split ('1', 6,742 images) is right
  # on 1,135 of the 10,000 test images.
  assert "Majority class" in text and tables.percent(0.1135) in text
  assert "60,000" in text and "10,000" in text


def test_launch_paper_mode_names_a_missing_run(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"), "--mode=paper",
       f"--workdir={tmp_path / 'paper'}", f"--runs=cnn={tmp_path}/nope"],
      capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"error: run cnn={tmp_path}/nope: no such run folder"]


def test_a_best_run_without_checkpoint_leaves_out_its_figures(tmp_path):
  folder, _ = _copy_run(tmp_path / "run", 0)
  shutil.rmtree(os.path.join(folder, "checkpoints"))
  result = assemble.write_paper([("cnn", folder)], str(tmp_path / "paper"),
                                compile_pdf=False)
  assert [f.label for f in result.floats if f.label.startswith("fig:")] == [
      "fig:curves"]
  assert any("has no checkpoint" in line for line in result.lines())
  assert "confusion" not in (tmp_path / "paper" / "paper.tex").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("config_name,figure", [("multidigit", "heatmaps"),
                                                ("unet_digits", "masks")])
def test_multilabel_and_segmentation_papers_show_their_maps(
    tmp_path, config_name, figure):
  """A few steps of the config; the paper shows the best run's Grad-CAM
  heat maps (multi-label) or masks (segmentation), and compiles."""
  import importlib  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import train  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.data.num_train, config.data.num_test = 32, 8
  config.data.batch_size, config.data.eval_batch_size = 16, 8
  config.train.num_epochs = 1
  if config_name == "unet_digits":
    config.model.features, config.model.depth = 4, 2
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  result = assemble.write_paper([("tiny", workdir)], str(tmp_path / "paper"),
                                compile_pdf=not compile_lib.tools_missing())
  assert [f.label for f in result.floats if f.label.startswith("fig:")] == [
      "fig:curves", f"fig:{figure}"], result.lines()
  with open(tmp_path / "paper" / "figures" / f"{figure}.pdf", "rb") as f:
    assert f.read(5) == b"%PDF-"
  if not compile_lib.tools_missing():
    assert result.compiled.pdf, result.compiled.message
