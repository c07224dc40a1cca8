"""Multi-process evaluation of tasks whose metrics need every example's
outputs, and the damaged-checkpoint fallback, on 2 processes x 2 CPU
devices on localhost (tests/distributed/launched.py).

Multi-label (AUROC from every example's scores) and detection (COCO mAP from
every image's decoded boxes): a tiny run trained in one process, then
`--mode=evaluate` in 2 processes; a hook saves the per-example outputs that
reach task.finalize in each process. Both processes hold exactly the
1-process evaluation's outputs, in order (13 test examples: an odd count,
padded in the last batch), and the metrics are the same.

Damaged checkpoint: a 2-process run stopped at step 6, its newest
checkpoint damaged (for both processes, or unreadable for process 1 only):
the relaunched processes both resume from step 4 and finish the run.
"""

import json
import os
import shutil

import chex
import numpy as np
import pytest

from cnn_jax.runs import checkpoint
from cnn_jax.runs import workdirs
from tests import tiny_run
from tests.distributed import launched
from tests.test_faults import DAMAGE

pytestmark = pytest.mark.usefixtures("launch_env")

# Every evaluation of the process saves the per-example outputs that reach
# task.finalize into FOLDER/examples_p<index>_of_<count>.npz.
_SAVE_EXAMPLES = """
import dataclasses
import jax
import numpy as np
from cnn_jax.training import steps
_evaluate = steps.evaluate
def _saving(eval_fn, state, dataset, batch_size, task, sharding=None):
  finalize = task.finalize
  def save_then_finalize(sums, examples):
    np.savez(f"{FOLDER}/examples_p{jax.process_index()}_of_"
             f"{jax.process_count()}.npz", **examples)
    return finalize(sums, examples)
  return _evaluate(eval_fn, state, dataset, batch_size,
                   dataclasses.replace(task, finalize=save_then_finalize),
                   sharding)
steps.evaluate = _saving
"""

# Tiny versions of configs/multidigit.py and configs/detect_digits.py:
# 16 training canvases (one step of 16), 13 test canvases in batches of 4.
_CANVASES = {"data.num_train": 16, "data.num_test": 13,
             "data.batch_size": 16, "data.eval_batch_size": 4,
             "train.num_epochs": 1, "checkpoint.every_steps": 0}
_TASKS = {
    "multilabel": ("multidigit.py", {
        "model.block_config": "(1, 1)", "model.growth_rate": 4,
        "model.num_init_features": 8, "model.bn_size": 2},
                   ("mean_auroc", "loss", "accuracy", "mean_f1")),
    "detection": ("detect_digits.py", {
        "model.stage_features": "(8, 8, 8, 8)", "model.fpn_features": 8,
        "model.head_features": 8},
                  ("map50", "map", "loss", "accuracy")),
}


def _examples(folder, index, count):
  with np.load(folder / f"examples_p{index}_of_{count}.npz") as saved:
    return dict(saved)


@pytest.mark.parametrize("task", [
    "multilabel", pytest.param("detection", marks=pytest.mark.slow)])
def test_two_process_evaluation_of_per_example_outputs_equals_one(
    task, launch_env, tmp_path):
  config_file, model, metrics = _TASKS[task]
  overrides = {**_CANVASES, **model}
  hook = _SAVE_EXAMPLES.replace("{FOLDER}", str(tmp_path))
  workdir = tmp_path / "run"
  launched.run(workdir, None, overrides, 1, 1, launch_env,
               hooks={0: hook}, config_file=config_file)
  launched.run(workdir, None, overrides, 2, 2, launch_env,
               ["--mode=evaluate"], hooks={0: hook, 1: hook},
               config_file=config_file)
  one = _examples(tmp_path, 0, 1)
  for index in range(2):
    two = _examples(tmp_path, index, 2)
    assert two.keys() == one.keys()
    for key, expected in one.items():
      assert len(expected) == 13, key  # every test example once
      np.testing.assert_allclose(two[key], expected, rtol=1e-4, atol=1e-5,
                                 err_msg=key)
  scores = one["score" if task == "multilabel" else "scores"]
  assert np.ptp(scores) > 0  # outputs that tell the examples apart
  summary = workdirs.read_summary(workdir)
  with open(workdir / "eval.json", encoding="utf-8") as f:
    evaluated = json.load(f)
  assert evaluated["devices"] == 4 and summary["devices"] == 1
  assert evaluated["test_examples"] == summary["test_examples"] == 13
  if task == "multilabel":  # an AUROC, computed from the scores
    assert 0 < summary["test_metrics"]["mean_auroc"] <= 1
  for key in metrics:
    np.testing.assert_allclose(evaluated["test_metrics"][key],
                               summary["test_metrics"][key], rtol=1e-5,
                               err_msg=key)


# Process 1 reads checkpoint 6 damaged (a file only it reads, or its view
# of a shared disk); process 0 reads it intact.
_STEP_6_DAMAGED_FOR_ME = """
from cnn_jax.runs import checkpoint_integrity
_verify = checkpoint_integrity.verify
def _step_6_damaged(arrays, meta, step):
  if step == 6:
    raise checkpoint_integrity.CheckpointError(
        "checkpoint step 6: damaged here")
  return _verify(arrays, meta, step)
checkpoint_integrity.verify = _step_6_damaged
"""


@pytest.fixture(scope="module")
def stopped_at_6(tiny_run_data, launch_env, tmp_path_factory):
  """The tiny run in 2 processes, stopped after step 6 (checkpoints 4, 6)."""
  workdir = tmp_path_factory.mktemp("stopped") / "run"
  results = launched.wait(launched.start(
      workdir, tiny_run_data, {"train.stop_after_steps": 6}, 2, 1,
      launch_env))
  assert [code for code, _, _ in results] == [143, 143], results[0][2][-2000:]
  assert checkpoint.saved_steps(str(workdir)) == [4, 6]
  return workdir


@pytest.mark.parametrize("damage", ["for both", "for process 1"])
def test_two_processes_fall_back_to_the_older_checkpoint_together(
    damage, stopped_at_6, tiny_run_data, launch_env, uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(stopped_at_6, workdir)
  newest = os.path.join(checkpoint.checkpoint_dir(str(workdir)), "6")
  hooks = None
  if damage == "for both":
    DAMAGE["truncated array file"](newest)
  else:
    hooks = {1: _STEP_6_DAMAGED_FOR_ME}
  results = launched.run(workdir, tiny_run_data, {}, 2, 1, launch_env,
                         hooks=hooks)
  assert "checkpoint step 6" in results[1][2], results[1][2][-2000:]
  if damage == "for both":
    assert "checkpoint step 6" in results[0][2], results[0][2][-2000:]
  else:  # process 0 read step 6, and skipped it with process 1
    assert ("checkpoint step 6: another process could not read it; skipping "
            "it") in results[0][2], results[0][2][-2000:]
  assert "resuming from the checkpoint of step 4" in results[0][1]
  assert os.path.isdir(newest + ".damaged")  # set aside, not deleted
  summary = workdirs.read_summary(workdir)
  assert (summary["status"], summary["steps"],
          summary["resumed_from_step"]) == ("finished", tiny_run.FINAL_STEP, 4)
  # Both processes trained on from step 4's state: the uninterrupted run.
  chex.assert_trees_all_close(checkpoint.restore_variables(str(workdir)),
                              checkpoint.restore_variables(
                                  str(uninterrupted)), **launched.ACROSS_COUNTS)
