"""Held-out splits carved from train with a fixed seed, for datasets that
ship without a validation (or test) split."""

import numpy as np

SPLIT_SEED = 0  # fixed: the held-out examples must not change between runs


def split_off(dataset, fraction, name, seed=SPLIT_SEED, config_key=""):
  """(rest, held_out): a random `fraction` of `dataset` held out.

  Both parts keep the source order (good for memory-mapped or lazy images).
  The choice depends only on (len(dataset), fraction, seed).
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"{config_key or 'fraction'}={fraction} is not in (0, 1)")
  n = len(dataset)
  held = int(round(n * fraction))
  if not 0 < held < n:
    raise ValueError(f"{config_key or 'fraction'}={fraction} of {n} examples "
                     f"({dataset.name}) leaves an empty split")
  order = np.random.default_rng([seed, n, held]).permutation(n)
  base = dataset.name.rsplit("/", 1)[0]
  return (dataset.subset(np.sort(order[held:]), f"{base}/train"),
          dataset.subset(np.sort(order[:held]), f"{base}/{name}"))


def complete(splits, data_config):
  """Adds 'test' (config.data.test_fraction, default 0.2) when the source has
  none, and 'val' (config.data.val_fraction, default 0: none) when asked for
  and missing; checks every split has the training example shape."""
  splits = dict(splits)
  if "test" not in splits:
    splits["train"], splits["test"] = split_off(
        splits["train"], data_config.get("test_fraction", 0.2), "test",
        config_key="config.data.test_fraction")
  val_fraction = data_config.get("val_fraction", 0.0)
  if val_fraction and "val" not in splits:
    splits["train"], splits["val"] = split_off(
        splits["train"], val_fraction, "val",
        config_key="config.data.val_fraction")
  expected = splits["train"].example_shape
  for split, data in splits.items():
    if data.example_shape != expected:
      raise ValueError(
          f"{data.name}: examples of shape {data.example_shape}, but train has "
          f"{expected}; set config.data.image_size=(H, W) to resize")
  return splits
