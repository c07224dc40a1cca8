"""Searches in one program: random sampling, successive halving, PBT, the
validation/test discipline and the search's outputs."""

import importlib.util
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.sweeps import search
from cnn_jax.sweeps import search_settings
from cnn_jax.sweeps import search_space
from cnn_jax.sweeps import search_steps
from cnn_jax.sweeps import search_trials
from cnn_jax.sweeps import sweep_config
from cnn_jax.sweeps import sweep_steps
from cnn_jax.training import steps
from configs import mnist_search


def _search_config(data_dir=None, kind="halving"):
  """configs/mnist_search.py shrunk: small CNN, batch 32 (7 steps/epoch on
  the tiny data's 230 train images), 2 epochs, rung at epoch 1."""
  config = mnist_search.get_config()
  config.model.features = (8, 16)
  config.model.hidden = 32
  config.data.batch_size = 32
  config.data.eval_batch_size = 50
  config.train.num_epochs = 2
  config.sweep.search = kind
  config.sweep.halving.rungs = (1,)
  config.sweep.pbt.every_steps = 4
  if data_dir is not None:
    config.data.data_dir = str(data_dir)
  return config


SPACE = {"optim": {"learning_rate": ("log_uniform", 1e-4, 1e-1),
                   "weight_decay": ("uniform", 0.0, 1e-3)},
         "seed": ("int", 3, 9),
         "train": {"label_smoothing": ("choice", (0.0, 0.05, 0.1))}}


def test_random_samples_are_seeded_and_within_bounds():
  parsed = search_space.parse(ml_collections.ConfigDict(SPACE))
  first = [search_space.sample(parsed, 7, t) for t in range(50)]
  assert first == [search_space.sample(parsed, 7, t) for t in range(50)]
  assert first != [search_space.sample(parsed, 8, t) for t in range(50)]
  assert len({v["optim.learning_rate"] for v in first}) == 50
  for values in first:
    assert 1e-4 <= values["optim.learning_rate"] <= 1e-1
    assert 0.0 <= values["optim.weight_decay"] <= 1e-3
    assert isinstance(values["seed"], int) and 3 <= values["seed"] <= 9
    assert values["train.label_smoothing"] in (0.0, 0.05, 0.1)
  # Log-uniform: about half the samples below the geometric midpoint.
  below = np.mean([v["optim.learning_rate"] < 10 ** -2.5 for v in first])
  assert 0.25 < below < 0.75
  # Resolved configs carry the values with the config's types.
  config = _search_config()
  config.sweep.space = ml_collections.ConfigDict(SPACE)
  resolved = sweep_config.resolved_config(config, first[0])
  assert resolved.optim.learning_rate == first[0]["optim.learning_rate"]
  assert isinstance(resolved.train.label_smoothing, float)
  assert "sweep" not in resolved


def test_grid_over_a_space_of_choices_enumerates_every_combination():
  parsed = search_space.parse(ml_collections.ConfigDict(
      {"optim": {"learning_rate": ("choice", (0.1, 0.01))},
       "seed": ("choice", (0, 1, 2))}))
  assert search_space.grid_size(parsed) == 6
  points = [search_space.grid_point(parsed, t) for t in range(6)]
  assert points[1] == {"optim.learning_rate": 0.1, "seed": 1}
  assert {tuple(p.values()) for p in points} == {
      (lr, s) for lr in (0.1, 0.01) for s in (0, 1, 2)}
  config = _search_config(kind="grid")
  config.sweep.space = ml_collections.ConfigDict(
      {"optim": {"learning_rate": ("choice", (0.1, 0.01))}})
  assert search_settings.is_search(config) and search_settings.settings(config)["trials"] == 2
  config.sweep.space.seed = ("int", 0, 3)
  with pytest.raises(ValueError, match=r"space\.seed: a grid search takes"):
    search_settings.settings(config)


@pytest.mark.parametrize("spec, message", [
    ({"optim": {"learning_rate": ("loguniform", 1e-4, 1e-1)}},
     r"config\.sweep\.space\.optim\.learning_rate=.* is not a distribution"),
    ({"optim": {"learning_rate": ("log_uniform", 0.0, 1e-1)}},
     r"optim\.learning_rate: 'log_uniform' needs low > 0"),
    ({"optim": {"learning_rate": ("uniform", 0.1, 0.01)}},
     r"optim\.learning_rate: low 0\.1 > high 0\.01"),
    ({"seed": ("int", 0.5, 3)}, r"space\.seed: 'int' needs integer bounds"),
    ({"seed": ("choice", ())}, r"space\.seed: 'choice' takes one non-empty"),
    ({"model": {"dropout_rate": 0.3}}, r"model\.dropout_rate=0\.3 is not a"),
])
def test_bad_distributions_are_one_line_errors_naming_the_key(spec, message):
  with pytest.raises(ValueError, match=message):
    search_space.parse(ml_collections.ConfigDict(spec))


@pytest.mark.parametrize("update, message", [
    ({"space": {"model": {"features": ("choice", ((8,), (16,)))}}},
     r"config\.sweep\.space: model\.features cannot differ"),
    ({"space": {"optim": {"b1": ("uniform", 0.8, 0.9)}}},
     r"config\.sweep\.space: optim\.b1 has no effect"),
    ({"slots": 0}, r"config\.sweep\.slots=0 must be >= 1"),
    ({"halving": {"rungs": (2,)}}, r"config\.sweep\.halving\.rungs=\(2,\)"),
    ({"search": "bayes"}, r"config\.sweep\.search='bayes' is not one of"),
])
def test_bad_search_settings_are_errors_naming_the_key(update, message):
  config = _search_config()
  config.optim.name = "sgd"
  for key, value in update.items():
    config.sweep[key] = (ml_collections.ConfigDict(value)
                         if isinstance(value, dict) else value)
  with pytest.raises(ValueError, match=message):
    search_settings.settings(config)


def test_halving_keeps_the_top_one_over_eta():
  halving = search_trials.Halving(rungs=(1, 3), eta=3)
  scores = {t: s for t, s in enumerate([0.5, 0.9, 0.1, 0.7, 0.3, 0.8])}
  assert halving.decide(1, scores) == {1, 5}  # top 6 // 3
  # A later arrival continues iff among the top (n // eta) recorded so far.
  assert halving.decide(1, {6: 0.85}) == {6}  # 2nd of 7: top 2
  assert halving.decide(1, {7: 0.75}) == set()  # 4th of 8: not top 2


def _data(config):
  splits = load_splits(config.data)
  train_set = splits["train"]
  mean, std = steps.normalization_stats(config.data, train_set)
  per_epoch = batching.steps_per_epoch(len(train_set), config.data.batch_size)
  return train_set, mean, std, per_epoch


def _found(config):
  found = search_settings.settings(config)
  return found, sweep_config.resolved_config(
      config, search_space.sample(found["space"], found["seed"], 0))


def test_refilled_slot_equals_a_fresh_single_run(tiny_mnist_dir):
  """Slot 1 is re-initialised in place (as search.py does at a rung) and
  trained on; its first steps equal a single run of its sampled config."""
  config = _search_config(tiny_mnist_dir, "random")
  config.sweep.slots = 2
  config.sweep.trials = 3
  found, probe = _found(config)
  train_set, mean, std, per_epoch = _data(probe)
  program = sweep_steps.shared_program(probe, per_epoch)
  augments = [probe.data.augment.to_dict()]
  train_step = jax.jit(sweep_steps.make_train_step(
      program.model, augments, mean=mean, std=std, member_count=2,
      vary_dropout=True))
  host = search_trials.Slots(config, found, train_set, 32)

  def fresh():
    states, _ = sweep_steps.init_members(host.configs, train_set.example_shape,
                                         per_epoch, program)
    return states, sweep_steps.hyperparameter_arrays(host.configs, augments)

  for slot in range(2):
    host.start(slot)
  states, hparams = fresh()
  alive = jnp.ones(2, bool)
  for _ in range(3):
    states, _, _ = train_step(states, alive, host.batch(), hparams)
  host.stop(1, "stopped", 3)
  trial = host.start(1)  # trial 2, sampled
  assert trial.id == 2
  new_states, hparams = fresh()
  before = sweep_steps.member_state(states, 0)
  states = search_steps.replace_slots(jnp.asarray([False, True]),
                                      new_states, states)
  chex.assert_trees_all_equal(sweep_steps.member_state(states, 0), before)
  num_steps = 4
  for _ in range(num_steps):
    states, _, _ = train_step(states, alive, host.batch(), hparams)
  member = host.configs[1]
  assert member.optim.learning_rate == trial.values["optim.learning_rate"]
  state, _ = steps.create_train_state(
      member, jax.random.PRNGKey(member.seed), train_set.example_shape,
      per_epoch)
  single = jax.jit(lambda s, b: steps.train_step(
      s.replace(apply_fn=program.model.clone(
          dropout_rate=member.model.dropout_rate).apply), b, mean=mean,
      std=std, label_smoothing=member.train.label_smoothing))
  batches = batching.train_batches(train_set, 32, member.seed)
  for _ in range(num_steps):
    state, _ = single(state, next(batches)[1])
  got = sweep_steps.member_state(states, 1)
  assert int(got.step) == num_steps
  chex.assert_trees_all_close(got.params, state.params, rtol=1e-5, atol=1e-6)


def test_pbt_exploit_copies_bitwise_and_perturbs_within_bounds(
    tiny_mnist_dir):
  config = _search_config(tiny_mnist_dir, "pbt")
  config.sweep.slots = 4
  config.sweep.pbt.quantile = 0.5
  config.sweep.space.optim.learning_rate = ("log_uniform", 1e-3, 2e-3)
  found, probe = _found(config)
  train_set, mean, std, per_epoch = _data(probe)
  program = sweep_steps.shared_program(probe, per_epoch)
  augments = [probe.data.augment.to_dict()]
  train_step = jax.jit(sweep_steps.make_train_step(
      program.model, augments, mean=mean, std=std, member_count=4,
      vary_dropout=True))
  host = search_trials.Slots(config, found, train_set, 32)
  for slot in range(4):
    host.start(slot)
  states, _ = sweep_steps.init_members(host.configs, train_set.example_shape,
                                       per_epoch, program)
  hparams = sweep_steps.hyperparameter_arrays(host.configs, augments)
  for _ in range(3):
    states, _, _ = train_step(states, jnp.ones(4, bool), host.batch(),
                              hparams)
  for slot, accuracy in enumerate([0.2, 0.9, 0.5, 0.1]):  # 1, 2 top
    host.current[slot].val.append((3, {"accuracy": accuracy, "loss": 1.0}))
  sources = list(host.current)
  host.steps[:] = 3
  new, new_hparams = search._exploit(  # pylint: disable=protected-access
      host, states, hparams, found, np.random.default_rng(0), "accuracy")
  for slot in (1, 2):  # the top half is untouched
    chex.assert_trees_all_equal(sweep_steps.member_state(new, slot),
                                sweep_steps.member_state(states, slot))
  for slot in (0, 3):
    child = host.current[slot]
    parent = host.trials[child.parent]
    assert parent in sources[1:3] and child.start_step == 3
    source = sweep_steps.member_state(states, parent.slot)
    copied = sweep_steps.member_state(new, slot)
    for part in ("params", "batch_stats", "step", "rng"):
      chex.assert_trees_all_equal(getattr(copied, part),
                                  getattr(source, part))
    chex.assert_trees_all_equal(copied.opt_state.inner_state,
                                source.opt_state.inner_state)
    for name in found["pbt"]["perturbed"]:
      low, high = search_space.bounds(found["space"], name)
      allowed = [min(max(parent.values[name] * f, low), high)
                 for f in (0.8, 1.2)]
      assert min(abs(child.values[name] - a) for a in allowed) < 1e-12, name
      if name.startswith("optim."):
        got = copied.opt_state.hyperparams[name.split(".", 1)[1]]
      else:
        got = new_hparams[search_steps.HPARAM_KEYS[name]][slot]
      assert float(got) == pytest.approx(child.values[name], rel=1e-6)
    assert child.trajectory[-1] == (3, {k: v for k, v in child.values.items()
                                        if k != "seed"})
    assert child.trajectory[:-1] == parent.trajectory


def test_halving_search_selects_on_val_and_tests_once_at_the_end(
    tiny_mnist_dir, tmp_path, monkeypatch):
  config = _search_config(tiny_mnist_dir, "halving")
  config.sweep.slots = 2
  config.sweep.trials = 4
  config.sweep.metric = "loss"  # no ties (accuracy on 26 images may tie)
  calls = []
  evaluate = search.evaluate_split

  def watched(split, *args, **kwargs):
    calls.append(split)
    return evaluate(split, *args, **kwargs)

  monkeypatch.setattr(search, "evaluate_split", watched)
  workdir = str(tmp_path / "search")
  summary = search.train_and_evaluate(config, workdir)
  # Selection only on 'val'; 'test' once (one group of kept trials), last.
  assert calls.count("test") == 1 and calls[-1] == "test"
  assert set(calls[:-1]) == {"val"}
  with open(os.path.join(workdir, "trials.jsonl")) as f:
    trials = [json.loads(line) for line in f]
  assert len(trials) == 4 == summary["trials"]
  assert {t["id"] for t in trials} == set(range(4))
  # Rung 1 (epoch 1 = 7 steps): the first cohort keeps its top 2 // 2.
  cohort = [t for t in trials if t["id"] < 2]
  at_rung = {t["id"]: -t["val"][0][1]["loss"] for t in cohort}
  assert all(t["val"][0][0] == 7 for t in cohort)
  kept = {t["id"] for t in cohort if t["status"] == "finished"}
  threshold = max(at_rung.values())
  assert kept == {i for i, a in at_rung.items() if a >= threshold}
  for t in cohort:
    assert (t["status"], t["stop_step"]) in (("finished", 14),
                                             ("stopped", 7))
  # The next sample refills the stopped trial's slot, from step 0.
  stopped = [t for t in cohort if t["status"] == "stopped"]
  assert len(stopped) == 1
  assert trials[2]["slot"] == stopped[0]["slot"]
  assert all(t["start_step"] == 0 for t in trials[2:])
  assert all(t["config"]["optim"]["learning_rate"]
             == t["values"]["optim.learning_rate"] for t in trials)
  # The ranking is by validation; test is reported for the kept trials.
  ranking = summary["ranking"]
  assert summary["best_trial"] == ranking[0]["trial"]
  finished = [r for r in ranking if r["status"] == "finished"]
  assert [r["val_loss"] for r in finished] == sorted(
      [r["val_loss"] for r in finished])
  assert ranking[0]["test_accuracy"] is not None
  # best_config.py is an ordinary single-run config of the best trial.
  spec = importlib.util.spec_from_file_location(
      "best_config", os.path.join(workdir, "best_config.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  best = module.get_config()
  assert "sweep" not in best
  best_values = trials[summary["best_trial"]]["values"]
  assert best.optim.learning_rate == best_values["optim.learning_rate"]
  assert best.to_dict() == sweep_config.resolved_config(
      config, best_values).to_dict()
  assert best.model.features == (8, 16)  # tuples stay tuples
  # The report: trials ranked, rungs, one figure per hyperparameter.
  from cnn_jax.reports import entry  # pylint: disable=g-import-not-at-top
  from cnn_jax.reports import plotting  # pylint: disable=g-import-not-at-top
  path = entry.write_report(workdir)
  with open(path) as f:
    text = f.read()
  assert "# Search report" in text and "## Rungs" in text
  stopped = sum(t["status"] == "stopped" for t in trials)
  assert f"- step 7: {stopped} trials stopped" in text
  for name in ("optim_learning_rate", "model_dropout_rate"):
    png = os.path.join(os.path.dirname(path), f"search_{name}.png")
    assert plotting.png_size(png) == (700, 400)
  with pytest.raises(search.search_outputs.workdirs.WorkdirInUseError):
    search.train_and_evaluate(config, workdir)


def test_search_needs_a_validation_split(tiny_mnist_dir, tmp_path):
  config = _search_config(tiny_mnist_dir, "random")
  config.data.val_fraction = 0.0
  with pytest.raises(ValueError, match="config.data.val_fraction"):
    search.train_and_evaluate(config, str(tmp_path / "search"))


class _Killed(Exception):
  pass


def _interrupted_search_config(tiny_mnist_dir, kind):
  """The search the kill and stop tests interrupt: 4 trials, ranked by
  validation loss (a finer comparison than accuracy on tiny data)."""
  config = _search_config(tiny_mnist_dir, kind)
  config.sweep.slots = 2 if kind == "halving" else 4
  config.sweep.trials = 4
  config.sweep.metric = "loss"
  return config


def assert_same_ranking(got, want, rel=1e-5):
  """Two search summaries ranked the same trials, with the same lineage,
  values, ends and (to `rel`) validation losses."""
  strip = lambda rows: [{k: r[k] for k in ("trial", "parent", "values",
                                           "status", "stop_step")}
                        for r in rows]
  assert strip(got["ranking"]) == strip(want["ranking"])
  for row, expected in zip(got["ranking"], want["ranking"]):
    assert row["val_loss"] == pytest.approx(expected["val_loss"], rel=rel)


@pytest.mark.slow
@pytest.mark.parametrize("kind, kill_at", [("halving", 17), ("pbt", 10)])
def test_killed_search_resumes_to_the_same_ranking(
    tiny_mnist_dir, tmp_path, monkeypatch, kind, kill_at):
  """A search killed mid-way (after an epoch-end checkpoint and rung or
  exploit decisions) and rerun with the same command ends with the same
  trials, ranking and best trial as one never interrupted."""
  config = _interrupted_search_config(tiny_mnist_dir, kind)
  whole = search.train_and_evaluate(config, str(tmp_path / "whole"))
  batch = search_trials.Slots.batch
  calls = []

  def dying(self):
    calls.append(1)
    if len(calls) == kill_at:
      raise _Killed()
    return batch(self)

  monkeypatch.setattr(search_trials.Slots, "batch", dying)
  workdir = str(tmp_path / "killed")
  with pytest.raises(_Killed):
    search.train_and_evaluate(config, workdir)
  assert os.listdir(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  monkeypatch.setattr(search_trials.Slots, "batch", batch)
  resumed = search.train_and_evaluate(config, workdir)
  assert resumed["steps"] == whole["steps"]
  assert resumed["best_trial"] == whole["best_trial"]
  assert_same_ranking(resumed, whole)
  assert resumed["test_accuracy"] == whole["test_accuracy"]


@pytest.mark.parametrize(
    "kind", ["halving", pytest.param("pbt", marks=pytest.mark.slow)])
def test_sigterm_mid_epoch_saves_the_step_and_resumes_to_the_same_ranking(
    tiny_mnist_dir, tmp_path, kind):
  """train.stop_after_steps=10 raises a real SIGTERM mid-epoch (7 steps an
  epoch), after a rung or exploits; the search saves step 10 itself (not the
  epoch end before it) and exits as preempted (143); the relaunch without
  the stop continues to the same trials, ranking and best trial."""
  from cnn_jax.training import preemption  # pylint: disable=g-import-not-at-top
  config = _interrupted_search_config(tiny_mnist_dir, kind)
  whole = search.train_and_evaluate(config, str(tmp_path / "whole"))
  workdir = str(tmp_path / "stopped")
  config.train.stop_after_steps = 10
  with pytest.raises(preemption.Preempted) as stopped:
    search.train_and_evaluate(config, workdir)
  assert (stopped.value.exit_code, stopped.value.step) == (143, 10)
  assert "10" in os.listdir(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  config.train.stop_after_steps = 0
  resumed = search.train_and_evaluate(config, workdir)
  assert resumed["steps"] == whole["steps"]
  assert resumed["member_steps"] == whole["member_steps"]
  assert resumed["best_trial"] == whole["best_trial"]
  assert_same_ranking(resumed, whole)
  assert resumed["test_accuracy"] == whole["test_accuracy"]


_TWO_DEVICES = r"""
import json, sys
import jax
sys.path.insert(0, "tests")
from cnn_jax.sweeps import search
from tests.sweeps.test_search import _search_config

assert len(jax.devices()) == 2, jax.devices()
results = {}
for member_devices in (1, 2):  # batch split over 2; slots split over 2
  config = _search_config(DATA, "halving")
  config.sweep.slots, config.sweep.trials = 2, 4
  config.sweep.metric = "loss"
  config.sweep.member_devices = member_devices
  summary = search.train_and_evaluate(config, f"{OUT}/{member_devices}")
  results[member_devices] = [(r["trial"], r["status"], r["val_loss"])
                             for r in summary["ranking"]]
print(json.dumps(results))
"""


@pytest.mark.slow
def test_search_with_slots_over_devices(tiny_mnist_dir, tmp_path):
  """Slots split over 2 devices ('members' axis) make the same decisions
  as slots on a data-parallel mesh."""
  from tests.conftest import run_on_cpu_devices  # pylint: disable=g-import-not-at-top
  code = _TWO_DEVICES.replace("DATA", repr(str(tiny_mnist_dir))).replace(
      "{OUT}", str(tmp_path))
  result = json.loads(run_on_cpu_devices(code, devices=2).splitlines()[-1])
  data_parallel, over_members = result["1"], result["2"]
  assert [r[:2] for r in over_members] == [r[:2] for r in data_parallel]
  for got, want in zip(over_members, data_parallel):
    assert got[2] == pytest.approx(want[2], rel=1e-4)


def test_a_diverged_trial_is_stopped_at_its_failing_step(tiny_mnist_dir):
  config = _search_config(tiny_mnist_dir, "random")
  config.sweep.slots, config.sweep.trials = 2, 2
  found, probe = _found(config)
  train_set = _data(probe)[0]
  host = search_trials.Slots(config, found, train_set, 32)
  for slot in range(2):
    host.start(slot)
  host.steps[:] = 10  # after a window of 3 steps; slot 1 failed at its 2nd
  search._diverged(host, np.asarray([[True, True], [True, False],  # pylint: disable=protected-access
                                     [True, False]]))
  assert host.current[0] is not None and host.current[1] is None
  assert (host.trials[1].status, host.trials[1].stop_step) == ("diverged", 8)
