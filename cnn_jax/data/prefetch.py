"""Batches to the device ahead of use, and the global batch split over
devices along a 'data' mesh axis.

A background thread draws host batches (indexing, decoding) and starts their
transfer with jax.device_put, keeping `size` batches in flight: while the
device runs step t, batch t+1 is already there and t+2 is being made.
"""

import queue
import threading

import jax
import numpy as np


def data_sharding(devices=None, axis="data"):
  """NamedSharding that splits dimension 0 (the batch) over `devices`.

  Built on call (never at import): a 1-D mesh over all devices by default.
  With it, `jax.device_put(batch, sharding)` places each device's slice of
  the global batch, and a jitted step runs data-parallel.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  mesh = jax.sharding.Mesh(devices.reshape(-1), (axis,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def check_divisible(batch_size, sharding, config_key="config.data.batch_size"):
  """The global batch must split evenly over the devices of `sharding`."""
  count = len(sharding.device_set)
  if batch_size % count:
    raise ValueError(f"{config_key}={batch_size} does not split evenly over "
                     f"{count} devices")


def _put(x, sharding):
  if sharding is None:
    return jax.device_put(x)
  # With several processes, x is this process's rows of the global array
  # (the identity of device_put with one process).
  return jax.make_array_from_process_local_data(sharding, x)


def _to_device(item, sharding):
  """Every numpy array in `item` on device; other leaves (e.g. an
  IteratorPosition) pass unchanged."""
  return jax.tree.map(
      lambda x: _put(x, sharding) if isinstance(x, np.ndarray) else x, item)


class _Done:
  def __init__(self, error=None):
    self.error = error


def prefetch_to_device(iterator, size=2, sharding=None):
  """Yields the items of `iterator` with their arrays already on device.

  Order and contents are unchanged (one producer thread), so a saved
  IteratorPosition carried in the items stays exact. An exception in the
  producer is raised here; closing this generator (or dropping it) stops the
  producer.

  Args:
    iterator: yields pytrees of numpy arrays, e.g. (position, batch) pairs.
    size: batches in flight (2 = double buffering); 0 = no prefetch.
    sharding: where to put arrays (e.g. data_sharding()); None = the default
      device. With several processes, each item holds this process's rows
      of the global arrays (jax.make_array_from_process_local_data).
  """
  if size <= 0:
    try:
      for item in iterator:
        yield _to_device(item, sharding)
    finally:
      close = getattr(iterator, "close", None)
      if close is not None:
        close()
    return
  buffer = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item):
    """Blocks until there is room, or returns False once stopped."""
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterator:
        if not put(_to_device(item, sharding)):
          return
      put(_Done())
    except BaseException as e:  # pylint: disable=broad-except
      put(_Done(e))  # re-raised in the consumer
    finally:
      # A source with resources (Grain's worker processes) is closed here,
      # on the thread that iterates it, as soon as it is no longer read.
      close = getattr(iterator, "close", None)
      if close is not None:
        close()

  thread = threading.Thread(target=produce, daemon=True,
                            name="prefetch_to_device")
  thread.start()
  try:
    while True:
      item = buffer.get()
      if isinstance(item, _Done):
        if item.error is not None:
          raise item.error
        return
      yield item
  finally:
    stop.set()
    # Wait for the producer (it notices `stop` within 0.1 s): a thread still
    # inside device_put when the interpreter exits aborts the process
    # ("terminate called ...") as the runtime is torn down.
    thread.join(timeout=10)
