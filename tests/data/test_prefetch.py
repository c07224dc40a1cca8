"""prefetch_to_device keeps order and positions, raises producer errors, and
stops when closed; data_sharding splits the global batch over devices."""

import textwrap
import threading

import jax
import numpy as np
import pytest

from cnn_jax.data import ArrayDataset
from cnn_jax.data import batching
from cnn_jax.data import prefetch
from tests.conftest import run_on_cpu_devices


def _dataset(n=40):
  return ArrayDataset(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1),
                      np.arange(n, dtype=np.int32), "toy")


@pytest.mark.parametrize("size", [0, 1, 2, 4])
def test_same_items_in_the_same_order_on_device(size):
  host = batching.train_batches(_dataset(), 8, seed=0)
  device = prefetch.prefetch_to_device(
      batching.train_batches(_dataset(), 8, seed=0), size=size)
  for _ in range(12):  # over two epoch boundaries
    (host_position, host_batch) = next(host)
    position, batch = next(device)
    assert position == host_position  # positions pass through untouched
    assert isinstance(batch["image"], jax.Array)
    np.testing.assert_array_equal(batch["image"], host_batch["image"])
    np.testing.assert_array_equal(batch["label"], host_batch["label"])


def test_a_producer_error_is_raised_in_the_consumer():
  def failing():
    yield {"x": np.zeros(2)}
    raise ValueError("bad record 7")

  iterator = prefetch.prefetch_to_device(failing(), size=2)
  next(iterator)
  with pytest.raises(ValueError, match="bad record 7"):
    next(iterator)


def test_finite_iterators_end_and_closing_stops_the_producer():
  items = list(prefetch.prefetch_to_device(
      iter([np.ones(3) * i for i in range(5)]), size=2))
  assert [float(x[0]) for x in items] == [0, 1, 2, 3, 4]
  iterator = prefetch.prefetch_to_device(
      batching.train_batches(_dataset(), 8, seed=0), size=2)
  next(iterator)
  iterator.close()
  for thread in threading.enumerate():
    if thread.name == "prefetch_to_device":
      thread.join(timeout=2.0)
      assert not thread.is_alive()


def test_batch_must_split_evenly_over_devices():
  sharding = prefetch.data_sharding()
  prefetch.check_divisible(8 * jax.device_count(), sharding)
  if jax.device_count() > 1:
    with pytest.raises(ValueError, match="config.data.batch_size=9"):
      prefetch.check_divisible(9, sharding)


def test_global_batch_is_split_over_two_host_devices():
  # A fresh process: the forced device count must be set before jax starts.
  code = textwrap.dedent("""
      import jax, numpy as np
      from cnn_jax.data import prefetch
      sharding = prefetch.data_sharding()
      batches = iter([{"image": np.arange(8 * 3).reshape(8, 3, 1, 1),
                       "label": np.arange(8)}])
      batch = next(prefetch.prefetch_to_device(batches, 2, sharding))
      shards = batch["image"].addressable_shards
      assert len(shards) == 2, shards
      assert sorted(s.index[0].start for s in shards) == [0, 4]
      total = jax.jit(lambda b: b["label"].sum())(batch)
      assert int(total) == 28
      try:
        prefetch.check_divisible(7, sharding)
      except ValueError as e:
        print("ERR", e)
      print("OK", len(jax.devices()))
      """)
  stdout = run_on_cpu_devices(code, devices=2, timeout=120)
  assert "OK 2" in stdout
  assert "config.data.batch_size=7 does not split evenly over 2" in stdout
