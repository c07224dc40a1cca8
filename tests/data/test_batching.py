"""Deterministic shuffling, resumable positions, complete padded evaluation."""

import numpy as np

from cnn_jax.data import ArrayDataset
from cnn_jax.data import batching


def _dataset(n=10):
  return ArrayDataset(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1),
                      np.arange(n, dtype=np.int32), "toy")


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
  data = _dataset(12)
  batches = _take(batching.train_batches(data, 4, seed=0), 6)
  epoch0 = np.concatenate([b["label"] for _, b in batches[:3]])
  epoch1 = np.concatenate([b["label"] for _, b in batches[3:]])
  assert sorted(epoch0.tolist()) == list(range(12))
  assert sorted(epoch1.tolist()) == list(range(12))
  assert not np.array_equal(epoch0, epoch1)
  assert not np.array_equal(batching.epoch_permutation(100, 0, 0),
                            batching.epoch_permutation(100, 0, 1))


def test_same_seed_same_batches_different_seed_different():
  data = _dataset(50)
  a = [b["label"] for _, b in _take(batching.train_batches(data, 8, 3), 10)]
  b = [b["label"] for _, b in _take(batching.train_batches(data, 8, 3), 10)]
  c = [b["label"] for _, b in _take(batching.train_batches(data, 8, 4), 10)]
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_resume_from_saved_position_continues_the_exact_sequence():
  data = _dataset(23)
  straight = _take(batching.train_batches(data, 5, seed=1), 11)
  position, _ = straight[6]
  resumed = _take(batching.train_batches(data, 5, seed=1, start=position), 4)
  for (_, expected), (_, got) in zip(straight[7:], resumed):
    np.testing.assert_array_equal(expected["label"], got["label"])


def test_remainder_is_dropped_for_training():
  data = _dataset(10)
  batches = _take(batching.train_batches(data, 4, seed=0), 3)
  assert batching.steps_per_epoch(10, 4) == 2
  assert batches[1][0] == batching.IteratorPosition(1, 0)
  assert all(b["label"].shape == (4,) for _, b in batches)


def test_eval_batches_cover_every_example_once_with_mask():
  data = _dataset(10)
  batches = list(batching.eval_batches(data, 4))
  assert [b["image"].shape[0] for b in batches] == [4, 4, 4]
  masks = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert masks.sum() == 10
  np.testing.assert_array_equal(labels[masks], np.arange(10))
