"""The host-side bookkeeping of a search (cnn_jax/sweeps/search.py): trials
and their lineage, the K slots (which trial, config, step and data position
each holds), successive halving's rung decisions, PBT's exploit and explore
choices. Plain Python and NumPy, no JAX: every decision here is a function
of recorded validation scores and a seeded generator, and all of it is
JSON for the search's checkpoint (search_resume.py).

Scores are "higher is better": validation accuracy, or minus the
validation loss (config.sweep.metric='loss').
"""

import dataclasses
import math

import numpy as np

from cnn_jax.data import batching
from cnn_jax.sweeps import search_space
from cnn_jax.sweeps import sweep_config


@dataclasses.dataclass
class Trial:
  """One trial: a configuration trained in a slot for a span of steps.

  A halving trial starts at step 0 from a fresh state; a PBT trial starts
  where its parent's state was copied from (start_step) with perturbed
  hyperparameters. trajectory: [(step, {key: value})], the values the
  trial (and, for PBT, its ancestors) trained with from that step on.
  val: [(step, {'accuracy', 'loss'})] on the validation split.
  """

  id: int
  values: dict
  slot: int
  start_step: int = 0
  stop_step: int = None
  parent: int = None
  status: str = "running"  # finished, stopped (at a rung), diverged, replaced
  trajectory: list = dataclasses.field(default_factory=list)
  val: list = dataclasses.field(default_factory=list)
  rungs_passed: list = dataclasses.field(default_factory=list)
  test: dict = None

  def score(self, metric):
    """The last validation score (higher is better); -inf before any."""
    if not self.val:
      return -math.inf
    return score_of(self.val[-1][1], metric)

  def record(self):
    return dataclasses.asdict(self)


class Slots:
  """The K slots on the host: each one's trial (None: idle), resolved
  config, step counter, and data iterator (the seed it was started from and
  how many batches it has given, so a resumed search continues it).

  block = (slots, rows): the part of the stacked batch [K, B, ...] this
  process draws (its devices' slots, and their rows of each batch;
  default all of it). Every process keeps the whole table: the decisions
  read only validation scores, the same in all of them.
  """

  def __init__(self, config, found, train_set, batch_size,
               block=(slice(None), slice(None))):
    self.config, self.found = config, found
    self.train_set, self.batch_size = train_set, batch_size
    self.local = range(found["slots"])[block[0]]
    self.rows = block[1]
    self._idle = None  # an idle block's stand-in batch (masked out)
    self.trials, self.next_id = [], 0
    count = found["slots"]
    self.current = [None] * count
    self.configs = [None] * count
    self.iterators = [None] * count
    self.iterator_seeds = [None] * count
    self.drawn = [0] * count
    self.steps = np.zeros(count, np.int64)  # each slot's trial's step

  def _iterator(self, slot, seed, drawn=0):
    per_epoch = batching.steps_per_epoch(len(self.train_set),
                                         self.batch_size)
    start = batching.IteratorPosition(drawn // per_epoch, drawn % per_epoch)
    self.iterators[slot] = batching.train_batches(
        self.train_set, self.batch_size, seed, start, rows=self.rows)
    self.iterator_seeds[slot], self.drawn[slot] = seed, drawn

  def start(self, slot, values=None, parent=None, step=0):
    """A new trial in `slot`: the next sample (or grid point) unless
    `values` are given; a PBT child (parent given) keeps the slot's data
    iterator, a fresh trial gets its own from its seed, epoch 0."""
    trial_id = self.next_id
    self.next_id += 1
    if values is None and self.found["kind"] == "grid":
      values = search_space.grid_point(self.found["space"], trial_id)
    elif values is None:
      values = search_space.sample(self.found["space"], self.found["seed"],
                                   trial_id)
    cfg = sweep_config.resolved_config(self.config, values)
    trial = Trial(trial_id, values, slot, start_step=step, parent=parent)
    if parent is not None:
      trial.trajectory = list(self.trials[parent].trajectory)
    trial.trajectory.append((step, {k: v for k, v in values.items()
                                    if k != "seed"}))
    self.trials.append(trial)
    self.current[slot], self.configs[slot] = trial, cfg
    self.steps[slot] = step
    if parent is None:
      self._iterator(slot, cfg.seed)
    return trial

  def stop(self, slot, status, step):
    trial = self.current[slot]
    trial.status, trial.stop_step = status, step
    self.current[slot] = None
    return trial

  def active(self):
    return np.asarray([t is not None for t in self.current])

  def batch(self):
    """{'image': [k, b, ...], 'label': [k, b]}: this process's block of the
    stacked batch (all K slots and B rows with one process): each active
    slot's next batch; an idle slot repeats the first active one's, or a
    stand-in batch (masked out). Other processes' slots only count."""
    batches = []
    for slot, trial in enumerate(self.current):
      if trial is None:
        continue
      self.drawn[slot] += 1
      if slot in self.local:
        batches.append((slot, next(self.iterators[slot])[1]))
    if self._idle is None:
      self._idle = next(batching.train_batches(
          self.train_set, self.batch_size, 0, rows=self.rows))[1]
    first = batches[0][1] if batches else self._idle
    by_slot = dict(batches)
    block = [by_slot.get(slot, first) for slot in self.local]
    return {k: np.stack([b[k] for b in block]) for k in first}

  def state(self):
    """JSON of everything above but the data and the config."""
    return {"trials": [t.record() for t in self.trials],
            "next_id": self.next_id,
            "current": [None if t is None else t.id for t in self.current],
            "iterator_seeds": self.iterator_seeds, "drawn": self.drawn,
            "steps": self.steps.tolist()}

  def restore(self, saved):
    """Back to `state()`'s snapshot (configs re-resolved, iterators
    re-positioned)."""
    self.trials = [Trial(**record) for record in saved["trials"]]
    self.next_id = saved["next_id"]
    self.steps = np.asarray(saved["steps"], np.int64)
    for slot, trial_id in enumerate(saved["current"]):
      trial = None if trial_id is None else self.trials[trial_id]
      self.current[slot] = trial
      self.configs[slot] = None if trial is None else (
          sweep_config.resolved_config(self.config, trial.values))
      seed = saved["iterator_seeds"][slot]
      if seed is not None:
        self._iterator(slot, seed, saved["drawn"][slot])


def score_of(metrics, metric):
  value = metrics[metric]
  return value if metric == "accuracy" else -value


class Halving:
  """Asynchronous successive halving (ASHA) with early stopping at rungs.

  A trial reaching rung r (an epoch of `rungs`) continues iff its score is
  among the best max(1, n // eta) of the n scores recorded at r so far
  (its own and those arriving with it included). Trials that reach a rung
  together (a cohort that started together) are decided together, so the
  first cohort of K trials keeps exactly its top max(1, K // eta).
  """

  def __init__(self, rungs, eta):
    self.rungs = tuple(int(r) for r in rungs)
    self.eta = eta
    self.results = {r: [] for r in self.rungs}  # rung -> scores recorded

  def decide(self, rung, arrivals):
    """arrivals: {trial id: score} reaching `rung` together -> the ids kept."""
    recorded = self.results[rung]
    recorded.extend(arrivals.values())
    keep = max(1, len(recorded) // self.eta)
    kept = set()
    for trial_id, score in arrivals.items():
      better = sum(1 for s in recorded if s > score)
      if better < keep:
        kept.add(trial_id)
    return kept

  def state(self):
    return {str(r): list(v) for r, v in self.results.items()}

  def restore(self, saved):
    self.results = {int(r): list(v) for r, v in saved.items()}


def exploit(scores, quantile, rng):
  """PBT's exploit: src [K] with src[k] = k except for the bottom `quantile`
  of members by score, which each take a member of the top quantile (drawn
  with `rng`). Ties break by slot (stable sort)."""
  scores = np.asarray(scores, np.float64)
  count = len(scores)
  n = max(1, int(math.floor(count * quantile)))
  if 2 * n > count:
    n = count // 2
  order = np.argsort(-scores, kind="stable")
  top, bottom = order[:n], order[count - n:]
  src = np.arange(count)
  for k in bottom:
    src[k] = top[int(rng.integers(len(top)))]
  return src


def explore_factors(names, factors, rng):
  """PBT's explore: {name: one of `factors`} drawn for each hyperparameter."""
  return {name: float(factors[int(rng.integers(len(factors)))])
          for name in sorted(names)}
