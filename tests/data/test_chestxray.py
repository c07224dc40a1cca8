"""ChestX-ray14 layout loader on a small generated folder; configs/chexnet.py."""

import csv
import functools
import os

import jax
import numpy as np
import pytest
from PIL import Image

from cnn_jax.data import batching
from cnn_jax.data import chestxray
from cnn_jax.data import grain_pipeline
from cnn_jax.data import load_splits
from cnn_jax.data.folder import UnknownClassError
from cnn_jax.tasks import task_for_run
from cnn_jax.training import steps

# (file, findings): 4 train_val patients (1-4), 2 test patients (5-6).
ROWS = [
    ("00000001_000.png", "Cardiomegaly"),
    ("00000001_001.png", "Cardiomegaly|Emphysema"),
    ("00000002_000.png", "No Finding"),
    ("00000003_000.png", "Hernia|Effusion|Atelectasis"),
    ("00000003_001.png", "No Finding"),
    ("00000004_000.png", "Pleural_Thickening"),
    ("00000005_000.png", "Pneumonia|Infiltration"),
    ("00000005_001.png", "No Finding"),
    ("00000006_000.png", "Mass|Nodule"),
]
TEST_FILES = ("00000005_000.png", "00000005_001.png", "00000006_000.png")
COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID",
           "Patient Age", "Patient Gender", "View Position",
           "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x",
           "y]")


def write_chestxray_folder(root, rows=ROWS, size=40):
  """The published layout: CSV + lists + PNGs split between images/ and
  images_002/images/ (the Kaggle copy's layout)."""
  rng = np.random.default_rng(0)
  os.makedirs(root / "images")
  os.makedirs(root / "images_002" / "images")
  with open(root / "Data_Entry_2017.csv", "w", newline="",
            encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for i, (name, findings) in enumerate(rows):
      patient = name.split("_")[0]
      writer.writerow([name, findings, i, int(patient), 50, "M", "PA", 1024,
                       1024, 0.14, 0.14])
      folder = root / ("images" if i % 2 else "images_002/images")
      pixels = rng.integers(0, 255, (size, size)).astype(np.uint8)
      Image.fromarray(pixels).save(folder / name)
  with open(root / "train_val_list.txt", "w", encoding="utf-8") as f:
    f.writelines(name + "\n" for name, _ in rows if name not in TEST_FILES)
  with open(root / "test_list.txt", "w", encoding="utf-8") as f:
    f.writelines(name + "\n" for name in TEST_FILES)
  return root


@pytest.fixture
def xray_dir(tmp_path):
  return write_chestxray_folder(tmp_path / "ChestX-ray14")


def _hot(*names):
  return [int(n in names) for n in chestxray.CLASS_NAMES]


def test_labels_and_patientwise_splits(xray_dir):
  splits = chestxray.load_chestxray14(str(xray_dir))
  assert set(splits) == {"train", "test"}
  train_set, test_set = splits["train"], splits["test"]
  assert train_set.images.shape == (6, 40, 40, 3)
  assert train_set.labels.shape == (6, 14) and train_set.labels.dtype == np.int32
  assert train_set.class_names == chestxray.CLASS_NAMES
  np.testing.assert_array_equal(train_set.labels, [
      _hot("Cardiomegaly"), _hot("Cardiomegaly", "Emphysema"), _hot(),
      _hot("Hernia", "Effusion", "Atelectasis"), _hot(),
      _hot("Pleural_Thickening")])
  np.testing.assert_array_equal(test_set.labels, [
      _hot("Pneumonia", "Infiltration"), _hot(), _hot("Mass", "Nodule")])
  # The pixels are those of the listed files (from both image folders).
  first = np.asarray(Image.open(xray_dir / "images_002/images" /
                                "00000001_000.png"))
  np.testing.assert_array_equal(train_set.images[0, :, :, 0], first)


def test_validation_patients_are_held_out_whole(xray_dir):
  splits = chestxray.load_chestxray14(str(xray_dir), val_fraction=0.5)
  assert len(splits["train"]) + len(splits["val"]) == 6
  # Images of one patient never straddle train and val: patient 1 and 3 have
  # two images each, so each split's size matches whole patients.
  sizes = {len(splits["train"]), len(splits["val"])}
  assert sizes <= {2, 3, 4}
  again = chestxray.load_chestxray14(str(xray_dir), val_fraction=0.5)
  np.testing.assert_array_equal(splits["val"].labels, again["val"].labels)


def test_unknown_finding_is_rejected_with_its_line(tmp_path):
  rows = ROWS[:3] + [("00000003_000.png", "Cardiomegaly|Pneumonitis")] + \
      ROWS[4:]
  root = write_chestxray_folder(tmp_path / "bad", rows)
  with pytest.raises(UnknownClassError,
                     match=r"Data_Entry_2017.csv:5: finding 'Pneumonitis' is "
                     r"not one of the 14 labels \(Atelectasis"):
    chestxray.load_chestxray14(str(root))


def test_no_finding_with_a_finding_is_rejected(tmp_path):
  rows = [("00000001_000.png", "No Finding|Mass")] + ROWS[1:]
  root = write_chestxray_folder(tmp_path / "bad", rows)
  with pytest.raises(ValueError, match="'No Finding' together with"):
    chestxray.load_chestxray14(str(root))


def test_missing_image_is_named(xray_dir):
  os.remove(xray_dir / "images" / "00000005_001.png")
  with pytest.raises(FileNotFoundError, match="00000005_001.png"):
    chestxray.load_chestxray14(str(xray_dir))


@pytest.mark.slow
def test_chexnet_config_one_train_step(xray_dir):
  """configs/chexnet.py loads the generated folder through load_splits and
  runs one step of DenseNet-121 (at 32x32 to stay small) with the
  reduce-on-plateau optimizer."""
  from configs import chexnet  # pylint: disable=g-import-not-at-top
  config = chexnet.get_config()
  config.data.data_dir = str(xray_dir)
  config.data.image_size = (32, 32)
  config.data.val_fraction = 0.0
  config.data.batch_size = 4
  splits = load_splits(config.data)
  train_set = splits["train"]
  assert train_set.example_shape == (32, 32, 3)
  task = task_for_run(config, train_set)
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      train_set.example_shape, 1)
  mean, std = steps.normalization_stats(config.data, train_set)
  np.testing.assert_allclose(mean, (0.485, 0.456, 0.406))
  step = jax.jit(functools.partial(
      steps.train_step, mean=mean, std=std,
      augment_config=config.data.augment.to_dict(), task=task))
  batch = next(batching.train_batches(train_set, 4, 0))[1]
  state, logged = step(state, batch)
  assert np.isfinite(logged["loss"]) and int(state.step) == 1
  eval_fn = jax.jit(functools.partial(steps.eval_step, mean=mean, std=std,
                                      task=task))
  result = steps.evaluate(eval_fn, state, splits["test"], 4, task)
  assert result["count"] == 3 and "auroc/Cardiomegaly" in result


def test_chexnet_optimizer_reduces_on_plateau():
  """config.optim.plateau_*: the updates shrink by plateau_factor once the
  loss (passed as value=..., as train_step does) stops improving."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from cnn_jax.training import optim  # pylint: disable=g-import-not-at-top
  from configs import chexnet  # pylint: disable=g-import-not-at-top
  optim_config = chexnet.get_config().optim
  optim_config.plateau_accumulation_steps = 2
  tx = optim.make_optimizer(optim_config,
                            optim.make_schedule(optim_config, 100, 10))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  sizes = []
  for value in (3.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0):
    updates, state = tx.update(params, state, params, value=jnp.array(value))
    sizes.append(float(optax.tree.norm(updates)))
  # Averages of 2 steps: 3, 2 (better), 2 (no better: x0.1 from the step
  # that completes it, the 6th), 2 (x0.1 again, the 8th).
  np.testing.assert_allclose(sizes[4] / sizes[0], 1.0, rtol=1e-3)
  np.testing.assert_allclose(sizes[5] / sizes[4], 0.1, rtol=1e-3)
  np.testing.assert_allclose(sizes[7] / sizes[6], 0.1, rtol=1e-3)


def test_grain_pipeline_streams_the_files_with_multi_hot_labels(xray_dir):
  in_memory = chestxray.load_chestxray14(str(xray_dir))["train"]
  options = chestxray.ImageOptions(pipeline="grain", image_size=(40, 40))
  files = chestxray.load_chestxray14(str(xray_dir), options=options)["train"]
  assert len(files.images.paths) == 6
  expected = list(zip(range(3), batching.train_batches(in_memory, 2, 0)))
  got = list(grain_pipeline.train_batches(
      files, 2, 0, num_batches=3,
      options=grain_pipeline.GrainOptions(workers=0)))
  for (_, (_, batch)), (_, grain_batch) in zip(expected, got):
    np.testing.assert_array_equal(grain_batch["label"], batch["label"])
    np.testing.assert_array_equal(grain_batch["image"], batch["image"])
