"""Does the input pipeline keep up with training? Images/s of the pipeline
alone against images/s of the train step, per dataset.

  python experiments/bench_data.py

(7 minutes when measured on 2 CPU cores shared with other jobs, load
average about 14; the JSON line records the load, as every figure here
scales with the CPU share the benchmark gets.)

Pipeline = host batches (shuffled indexing; for the lazy JPEG folder also
decoding in worker threads) + prefetch_to_device (jax.device_put, double
buffered) + the on-device augmentation and normalisation of train_step.
Train step = the jitted train_step (with the same augmentation) on a batch
already on the device. Ratio > 1: the pipeline is not the bottleneck.

Datasets: bundled MNIST (simple CNN), the bundled CIFAR-10 subset (simple CNN
with batch norm), and 512 JPEGs of 224x224 made from CIFAR images upscaled
(a 4-stage simple CNN), read decoded-up-front ("in memory"), decoded per
batch ("lazy"), and from the .npy cache. Prints a table, then as its LAST
line one JSON object with the headline figures.
"""

import functools
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnn_jax.data import augment
from cnn_jax.data import batching
from cnn_jax.data import load_splits
from cnn_jax.data import prefetch
from cnn_jax.training import steps  # pylint: disable=g-import-not-at-top
from configs import cifar10_simple
from configs import mnist

_SECONDS = 2.0  # timing window per measurement (after warm-up)
_NUM_JPEGS = 512


def _timed_rate(run_once, images_per_call, seconds=_SECONDS, warmup=2,
                min_calls=3):
  """images/s of repeated run_once() calls; run_once returns something to
  block on, and the clock stops when the last result is ready."""
  for _ in range(warmup):
    jax.block_until_ready(run_once())
  calls, start, result = 0, time.perf_counter(), None
  while calls < min_calls or time.perf_counter() - start < seconds:
    result = run_once()
    calls += 1
  jax.block_until_ready(result)
  return calls * images_per_call / (time.perf_counter() - start)


def pipeline_rate(train_set, config, mean, std):
  """Host batches + device_put + on-device augmentation, images/s."""
  augment_config = config.data.augment.to_dict()
  on_device = jax.jit(lambda images, key: augment.normalize(
      augment.augment_batch(images.astype(jnp.float32), key, augment_config),
      mean, std))
  batches = prefetch.prefetch_to_device(batching.train_batches(
      train_set, config.data.batch_size, config.seed), size=2)
  key = jax.random.PRNGKey(0)

  def host_only():
    _, batch = next(batches)
    return batch["image"]

  def with_augment():
    _, batch = next(batches)
    return on_device(batch["image"], key)

  size = config.data.batch_size
  rates = (_timed_rate(host_only, size), _timed_rate(with_augment, size))
  batches.close()
  return rates


def train_step_rate(train_set, config, mean, std):
  """The jitted train step on a device-resident batch, images/s."""
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      train_set.example_shape, 100)
  step = jax.jit(functools.partial(
      steps.train_step, mean=mean, std=std,
      augment_config=config.data.augment.to_dict()), donate_argnums=0)
  _, batch = next(batching.train_batches(train_set, config.data.batch_size, 0))
  batch = jax.device_put(batch)
  holder = [state]

  def run_once():
    holder[0], metrics = step(holder[0], batch)
    return metrics["loss"]

  # One warm-up call compiles; a step is the slow part at 224x224.
  return _timed_rate(run_once, config.data.batch_size, warmup=1, min_calls=2)


def make_jpeg_folder(root, cifar_train, count=_NUM_JPEGS, size=224):
  """count CIFAR images upscaled to size x size, as root/<class>/NNNN.jpg."""
  for i in range(count):
    folder = os.path.join(root, f"class{cifar_train.labels[i]}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(cifar_train.images[i]).resize(
        (size, size), Image.Resampling.BILINEAR).save(
            os.path.join(folder, f"{i:04d}.jpg"), quality=90)


def jpeg_config(root, **data):
  config = cifar10_simple.get_config()
  config.data.name = "image_folder"
  config.data.data_dir = root
  config.data.batch_size = 32
  config.data.test_fraction = 0.1  # the folder has no test/: split one off
  for key, value in data.items():
    config.data[key] = value
  # ImageNet-style augmentation, on device.
  config.data.augment.crop_padding = 0
  config.data.augment.resized_crop_min_scale = 0.08
  config.data.augment.brightness = 0.4
  config.data.augment.contrast = 0.4
  config.data.augment.saturation = 0.4
  # A small CNN, so a 224x224 step fits the 2-core time budget:
  # conv8-pool-conv16-pool (224 -> 56) - dense64 - dense10.
  config.model.features = (8, 16)
  config.model.hidden = 64
  return config


def bench(name, config, rows, timings=None, step=None):
  """One table row; `step` reuses a train-step rate measured for the same
  model and image size (the data source does not change the step)."""
  start = time.perf_counter()
  train_set = load_splits(config.data)["train"]
  load_seconds = time.perf_counter() - start
  mean, std = steps.normalization_stats(config.data, train_set)
  host, piped = pipeline_rate(train_set, config, mean, std)
  if step is None:
    step = train_step_rate(train_set, config, mean, std)
  row = {"dataset": name, "batch": config.data.batch_size,
         "image_shape": list(train_set.example_shape),
         "load_s": round(load_seconds, 2),
         "host_device_put_img_s": round(host, 1),
         "pipeline_img_s": round(piped, 1), "train_step_img_s": round(step, 1),
         "ratio": round(piped / step, 2), **(timings or {})}
  rows.append(row)
  print(f"  {name}: pipeline {piped:.0f} img/s, train step {step:.0f} img/s",
        flush=True)
  return row


def main():
  started = time.perf_counter()
  rows = []
  config = mnist.get_config()
  config.data.augment.crop_padding = 2  # a typical digits augmentation
  bench("mnist", config, rows)
  cifar_config = cifar10_simple.get_config()
  bench("cifar10_subset", cifar_config, rows)

  with tempfile.TemporaryDirectory() as tmp:
    cifar_train = load_splits(cifar_config.data)["train"]
    start = time.perf_counter()
    make_jpeg_folder(os.path.join(tmp, "jpegs"), cifar_train)
    print(f"  wrote {_NUM_JPEGS} JPEGs 224x224 in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    root = os.path.join(tmp, "jpegs")
    step = bench("jpeg224_in_memory", jpeg_config(root),
                 rows)["train_step_img_s"]
    bench("jpeg224_lazy", jpeg_config(root, in_memory=False), rows, step=step)
    cache = os.path.join(tmp, "cache")
    start = time.perf_counter()
    load_splits(jpeg_config(root, cache_dir=cache).data)
    write_seconds = time.perf_counter() - start
    bench("jpeg224_cached", jpeg_config(root, cache_dir=cache), rows,
          {"cache_write_s": round(write_seconds, 2)}, step=step)

  header = ("dataset", "batch", "load_s", "host_device_put_img_s",
            "pipeline_img_s", "train_step_img_s", "ratio")
  print()
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(str(row[h]) for h in header) + " |")
  jpeg_decode = rows[2]["load_s"]
  print(f"\nJPEG decode up front: {_NUM_JPEGS} files in {jpeg_decode:.2f} s "
        f"({_NUM_JPEGS / jpeg_decode:.0f} img/s incl. scan, "
        f"{os.cpu_count()} CPU cores); cache written in "
        f"{rows[4]['cache_write_s']:.2f} s, read back in "
        f"{rows[4]['load_s']:.2f} s")
  headline = {
      "device": jax.devices()[0].device_kind,
      "cpu_cores": os.cpu_count(),
      "seconds": round(time.perf_counter() - started, 1),
      # Other jobs share the CPU: the 1-minute load average says how much.
      "load_average_1min": round(os.getloadavg()[0], 1),
      **{row["dataset"]: {k: row[k] for k in ("pipeline_img_s",
                                              "train_step_img_s", "ratio")}
         for row in rows},
      "jpeg224_decode_img_s": round(_NUM_JPEGS / jpeg_decode, 1),
  }
  print(json.dumps(headline))


if __name__ == "__main__":
  main()
