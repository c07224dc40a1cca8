"""A run folder written before the package layout changed (issue 18) still
restores, evaluates and reports: run folders hold arrays and JSON, not
module paths. The folder is tests/fixtures/run_before_layout (its README
says how it was made)."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from cnn_jax.reports import entry
from cnn_jax.reports import restored_run
from cnn_jax.training import train
from tests.conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "fixtures", "run_before_layout")


@pytest.fixture(name="old_run")
def _old_run(tmp_path):
  """A copy (the fixture itself is never written to)."""
  return str(shutil.copytree(FIXTURE, tmp_path / "run_before_layout"))


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return json.load(f)


def test_restores_and_predicts_what_it_reported(old_run):
  summary = _summary(old_run)
  run = restored_run.load_run(old_run)
  assert run.step == summary["steps"] == 120
  logits, metrics = restored_run.predict(run)
  assert logits.shape == (10_000, 10)
  assert metrics["count"] == 10_000
  # The same test images right as when the run finished (an exact count).
  assert round(metrics["accuracy"] * 10_000) == round(
      summary["test_accuracy"] * 10_000)
  np.testing.assert_allclose(metrics["loss"], summary["test_loss"], rtol=1e-4)


def test_evaluates_with_its_config(old_run):
  config = ml_collections.ConfigDict(_summary(old_run)["config"])
  results, path = train.evaluate_checkpoint(config, old_run)
  assert os.path.basename(path) == "eval.json"
  assert results["step"] == 120
  assert results["test_examples"] == 10_000
  assert results["test_accuracy"] == pytest.approx(
      _summary(old_run)["test_accuracy"], abs=1e-4)


def test_reports(old_run):
  path = entry.write_report(old_run)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  assert "0.2059" in text or "20.59" in text
