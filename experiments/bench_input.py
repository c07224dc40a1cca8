"""Images/s of the Grain input pipeline against a PyTorch DataLoader doing
the same work, per worker count, and the CPU cores one GPU needs.

  python experiments/bench_input.py                 # 256 JPEGs, ~2 minutes
  python experiments/bench_input.py --repeats=3      # medians of 3 (noisy CPUs)
  python experiments/bench_input.py --images=4096   # the issue's full size

Work per image (both sides): open a JPEG of ImageNet size (~500x375, made by
cnn_jax/data/photo_like.py: seeded, photo-like so decoding costs what it
costs on photos), decode, random-resized crop (scale 0.08-1, ratio 3/4-4/3)
to 224x224 with bilinear resampling, random horizontal flip, uint8 HWC;
batches of --batch. Ours: cnn_jax/data/grain_pipeline.py with --workers
worker processes (and once more without reduced-size JPEG decoding, and
once from a TFDS imagenet2012 array-record copy of the same JPEGs:
data/tfds_images.py, each record read and parsed in the worker). PyTorch:
a torch Dataset with the same PIL calls (torchvision's ImageFolder +
RandomResizedCrop do the same; torchvision is not installed here) in a
torch.utils.data.DataLoader with as many workers, shuffled. Measured after
the first batch (worker start-up excluded, reported apart), in one process,
alternating ours and PyTorch's per worker count.

CPU ms per image: the same work in this process, files against TFDS
records, timed as CPU time (robust to other jobs' load).

Cores per GPU: images/s per worker of ours at the largest worker count,
against 6,830 img/s (JAX ResNet-50 training on one NVIDIA H200, bf16,
README Speed). The files are generated once into --dir (default: a cache
folder) and reused. Prints a table, then as its LAST line one JSON object.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import machine  # pylint: disable=g-import-not-at-top
from cnn_jax.data import decode  # pylint: disable=g-import-not-at-top
from cnn_jax.data import grain_pipeline
from cnn_jax.data import photo_like
from cnn_jax.data import tfds_images
from cnn_jax.data import tfds_write
from cnn_jax.data.folder import load_image_folder
from cnn_jax.data.image_files import ImageOptions
from cnn_jax.data.tfds_source import TfdsOptions

try:
  import torch  # pylint: disable=g-import-not-at-top
except ImportError:  # the comparison needs it: pip install torch
  torch = None

H200_RESNET50_IMG_S = 6830  # README, Speed: JAX bf16, batch 256
_SIZE = (224, 224)
_SCALE, _RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
_WARM = 8  # batches drawn before timing (>= 2 per worker + 1)




def _folder(root, images, seed):
  """The generated ImageNet-layout folder (4 classes), made once."""
  root = os.path.join(root, f"jpegs{images}_seed{seed}")
  if not os.path.isdir(os.path.join(root, "train")):
    partial = root + ".partial"
    photo_like.write_imagenet_folder(partial, num_classes=4,
                                     per_class=images // 4, val_per_class=0,
                                     size=(500, 375), seed=seed)
    os.replace(partial, root)
  return root


def _tfds_copy(root):
  """The folder as TFDS imagenet2012 (array-record), written once."""
  data_dir = root + "_tfds"
  if not os.path.isdir(data_dir):
    partial = data_dir + ".partial"
    tfds_write.write_tfds_imagenet(partial, root)
    os.replace(partial, data_dir)
  return data_dir


def _grain_rate(dataset, workers, batch, batches, reduced):
  augment = decode.HostAugment(_SIZE, _SCALE, _RATIO, flip=True,
                               reduced_decode=reduced)
  iterator = grain_pipeline.train_batches(
      dataset, batch, seed=0, num_batches=batches + _WARM + 1,
      augment=augment,
      options=grain_pipeline.GrainOptions(workers=workers, prefetch=2))
  return _time(iterator, batch, lambda item: item[1]["image"], batches)


def _cpu_ms_per_image(dataset, passes=3):
  """Median over `passes` of the CPU time (this process, all its threads)
  per image of what a worker does: read the example (file or TFDS record),
  decode + crop + flip, take its label. CPU time, unlike images/s, barely
  moves with the load other jobs put on the machine."""
  augment = decode.HostAugment(_SIZE, _SCALE, _RATIO, flip=True)
  times = []
  for _ in range(passes):
    rng = np.random.default_rng(0)
    start = time.process_time()
    for i in range(len(dataset)):
      source, name = dataset.images.encoded(i)
      decode.decode_file(source, augment, rng, name=name)
      dataset.labels[i]  # pylint: disable=pointless-statement
    times.append((time.process_time() - start) / len(dataset) * 1e3)
  return float(np.median(times))


class TorchImages:  # a torch Dataset (map-style): len and getitem
  """The same decode + random-resized crop + flip, PyTorch-style: an
  RNG per (epoch-free) index draw, full decode as torchvision's loader."""

  def __init__(self, paths, labels):
    self.paths, self.labels = paths, labels

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    rng = np.random.default_rng()
    with Image.open(self.paths[i]) as image:
      image = image.convert("RGB")
      left, top, w, h = decode.random_resized_box(rng, *image.size, _SCALE,
                                                  _RATIO)
      image = image.resize((_SIZE[1], _SIZE[0]), Image.Resampling.BILINEAR,
                           box=(left, top, left + w, top + h))
      array = np.asarray(image, np.uint8)
    if rng.random() < 0.5:
      array = array[:, ::-1]
    return torch.from_numpy(array.copy()), int(self.labels[i])


def _torch_rate(dataset, workers, batch, batches):
  torch.set_num_threads(1)
  images = dataset.images
  paths = [images.path(i) for i in range(len(dataset))]
  loader = torch.utils.data.DataLoader(
      TorchImages(paths, np.asarray(dataset.labels)), batch_size=batch,
      shuffle=True, num_workers=workers, drop_last=True,
      prefetch_factor=2 if workers else None,
      persistent_workers=False)

  def forever():
    while True:
      yield from loader
  stream = forever()
  return _time(stream, batch, lambda item: item[0], batches)


def _time(iterator, batch, images_of, batches):
  """(steady images/s after the first batch, seconds to the first). The
  clock stops at the last batch (closing the workers is not timed)."""
  start = time.perf_counter()
  first = next(iterator)
  assert images_of(first).shape[1:] == (*_SIZE, 3)
  startup = time.perf_counter() - start
  # Batches made while the other workers were starting (each keeps 2
  # ready, on both sides) are drawn before the clock starts.
  for _ in range(_WARM):
    images_of(next(iterator))
  ready = time.perf_counter()
  for _ in range(batches):
    images_of(next(iterator))
  end = time.perf_counter()
  close = getattr(iterator, "close", None)
  if close:
    close()
  return batches * batch / (end - ready), startup


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=1,
                      help="alternated measurements per cell (medians)")
  parser.add_argument("--workers", default="",
                      help="comma-separated; default 1..cores")
  parser.add_argument("--dir", default=os.path.join(
      os.path.expanduser("~"), ".cache", "cnn_jax", "bench_input"))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  cores = grain_pipeline.available_cores()
  workers = ([int(w) for w in args.workers.split(",")] if args.workers
             else list(range(1, cores + 1)))
  root = _folder(args.dir, args.images, args.seed)
  dataset = load_image_folder(root, ImageOptions(
      image_size=_SIZE, pipeline="grain"))["train"]
  from_tfds = tfds_images.load_split(
      TfdsOptions(tfds_name="imagenet2012"),
      ImageOptions(image_size=_SIZE, pipeline="grain"), "train",
      _tfds_copy(root))
  # Timed: --epochs epochs' worth of batches, after _WARM + 1.
  batches = args.epochs * (len(dataset) // args.batch)
  load_before = os.getloadavg()
  rows = []
  print(f"{len(dataset)} JPEGs (~500x375) -> 224x224 random-resized crop + "
        f"flip, batch {args.batch}; {machine.cpu_description()}, {cores} cores")
  print(f"{'workers':>7} {'ours img/s':>10} {'ours, full decode':>17} "
        f"{'ours, TFDS':>10} {'PyTorch img/s':>13} {'ratio':>6} "
        f"{'start-up ours/torch s':>22}")
  for count in workers:
    # Alternated --repeats times; the medians are reported.
    samples = {"ours": [], "full": [], "tfds": [], "torch": [], "start": []}
    for _ in range(args.repeats):
      ours, ours_start = _grain_rate(dataset, count, args.batch, batches,
                                     True)
      torch_rate, torch_start = _torch_rate(dataset, count, args.batch,
                                            batches)
      full, _ = _grain_rate(dataset, count, args.batch, batches, False)
      tfds_rate, _ = _grain_rate(from_tfds, count, args.batch, batches, True)
      for key, value in (("ours", ours), ("full", full), ("tfds", tfds_rate),
                         ("torch", torch_rate),
                         ("start", (ours_start, torch_start))):
        samples[key].append(value)
    ours, full, tfds_rate, torch_rate = (
        float(np.median(samples[k])) for k in ("ours", "full", "tfds", "torch"))
    ours_start, torch_start = np.median(samples["start"], axis=0)
    rows.append({"workers": count, "ours_img_s": round(ours, 1),
                 "ours_full_decode_img_s": round(full, 1),
                 "ours_tfds_img_s": round(tfds_rate, 1),
                 "torch_img_s": round(torch_rate, 1),
                 "ratio": round(ours / torch_rate, 3),
                 "ratio_per_repeat": [round(a / b, 3) for a, b in zip(
                     samples["ours"], samples["torch"])],
                 "startup_s": [round(float(ours_start), 2),
                               round(float(torch_start), 2)]})
    print(f"{count:>7} {ours:>10.1f} {full:>17.1f} {tfds_rate:>10.1f} "
          f"{torch_rate:>13.1f} "
          f"{ours / torch_rate:>6.2f} {ours_start:>10.2f} / {torch_start:.2f}")
  cpu_ms = {"files": round(_cpu_ms_per_image(dataset), 3),
            "tfds": round(_cpu_ms_per_image(from_tfds), 3)}
  print(f"CPU ms per image in one process (read + decode + crop, median of "
        f"3 passes): files {cpu_ms['files']:.3f}, TFDS records "
        f"{cpu_ms['tfds']:.3f} ({cpu_ms['tfds'] / cpu_ms['files']:.2f}x)")
  last = rows[-1]
  per_core = last["ours_img_s"] / last["workers"]
  needed = H200_RESNET50_IMG_S / per_core
  print(f"ours: {per_core:.0f} img/s per worker core -> {needed:.0f} cores "
        f"feed one H200 training ResNet-50 ({H200_RESNET50_IMG_S:,} img/s)")
  print(f"load average before / after: {load_before} / {os.getloadavg()}")
  print(json.dumps({
      "benchmark": "bench_input", "cpu": machine.cpu_description(), "cores": cores,
      "images": len(dataset), "batch": args.batch, "rows": rows,
      "cpu_ms_per_image": cpu_ms,
      "min_ratio": min(r["ratio"] for r in rows),
      "img_s_per_core": round(per_core, 1),
      "cores_per_h200_resnet50": round(needed, 1),
      "loadavg_before": load_before, "loadavg_after": os.getloadavg()}))


if __name__ == "__main__":
  main()
