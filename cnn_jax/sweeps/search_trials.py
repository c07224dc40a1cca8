"""The host-side bookkeeping of a search (cnn_jax/sweeps/search.py): trials
and their lineage, successive halving's rung decisions, PBT's exploit and
explore choices. Plain Python and NumPy, no JAX: every decision here is a
function of recorded validation scores and a seeded generator.

Scores are "higher is better": validation accuracy, or minus the
validation loss (config.sweep.metric='loss').
"""

import dataclasses
import math

import numpy as np


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
