"""Markdown reports of finished runs and sweeps: report.md with PNGs beside it.

  python launch.py --mode=report --workdir=runs/mnist [--overwrite_report]
      [--report_html]

writes `<workdir>/report/report.md` (and report.html with --report_html).

A run's report: the key settings and the full config; the data (splits,
shapes, normalisation, augmentation); the model's parameters per layer; the
final test metrics from summary.json with a 95% confidence interval over the
test sample, checked against a re-evaluation of the final checkpoint; timing
(wall time, img/s, device); and figures: learning curves, confusion matrix,
per-class accuracy, misclassified examples, first-layer filters, feature
maps of the first conv layer and saliency maps. The figures that need
predictions come from the final checkpoint (checkpoint.restore), evaluated
on the whole test split.

A sweep's report (a workdir with members/<k>/): a table of the members,
mean and 95% confidence interval (Student t) of the test metrics over the
members that differ only in their seed, the members' test-accuracy curves,
and the top-level summary files of the sweep, linked.

An existing report is never overwritten silently: report.md ends with a
marker holding a hash of its text. A report.md whose text still matches its
marker (written by this module and not edited since) is regenerated; one
that was edited, or was not written by this module, is kept and
ReportExistsError is raised, unless `overwrite=True` (--overwrite_report).
"""

import dataclasses
import functools
import glob
import hashlib
import html as html_lib
import json
import math
import os
from typing import Any, Dict

import jax
import ml_collections
import numpy as np

from cnn_jax import checkpoint
from cnn_jax import train
from cnn_jax import visualize
from cnn_jax import workdirs
from cnn_jax import writers
from cnn_jax.data import load_splits
from cnn_jax.models import summary as model_summary

REPORT_DIR = "report"
_MARKER = "<!-- cnn_jax.report sha256="
# Two-sided 95% Student t quantiles by degrees of freedom (1..30); beyond 30
# the normal 1.96 is within 2%.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262,
        2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093,
        2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
        2.042)


class ReportExistsError(ValueError):
  """report.md exists and was edited (or not written by this module)."""


# --------------------------------------------------------------------------
# Statistics.


def wilson_interval(correct, total, z=1.96):
  """(low, high) Wilson score interval of an accuracy `correct / total`
  (95% for z = 1.96): the uncertainty due to the finite test sample."""
  if total <= 0:
    return (float("nan"), float("nan"))
  p = correct / total
  denominator = 1 + z * z / total
  centre = (p + z * z / (2 * total)) / denominator
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
  return (centre - half / denominator, centre + half / denominator)


def mean_confidence_interval(values):
  """(mean, half width of the 95% Student t interval, n); half width NaN
  for fewer than 2 values."""
  values = np.asarray(values, np.float64)
  n = len(values)
  mean = float(values.mean()) if n else float("nan")
  if n < 2:
    return mean, float("nan"), n
  t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
  return mean, float(t * values.std(ddof=1) / math.sqrt(n)), n


# --------------------------------------------------------------------------
# Restoring a run and predicting.


@dataclasses.dataclass
class RestoredRun:
  """A finished run, read back: its summary.json, config, data and the
  train state of its final checkpoint."""

  workdir: str
  summary: Dict[str, Any]
  config: ml_collections.ConfigDict
  splits: Dict[str, Any]
  state: Any
  step: int
  mean: np.ndarray
  std: np.ndarray

  @property
  def variables(self):
    return {"params": self.state.params,
            "batch_stats": self.state.batch_stats}

  def normalize(self, images):
    """uint8 images [B, H, W, C] -> the float inputs the model was trained
    on."""
    images = np.asarray(images, np.float32) / 255.0
    return (images - self.mean) / self.std


def load_run(workdir, step=None):
  """RestoredRun of `workdir`: the checkpoint of `step`, default the final
  one (summary.json's step, else the latest intact checkpoint).

  Raises:
    FileNotFoundError: no summary.json.
    checkpoint.CheckpointError: no intact checkpoint.
  """
  summary = workdirs.read_summary(workdir)
  if summary is None:
    raise FileNotFoundError(
        f"no summary.json in {workdir!r}: not a run folder, or the run has "
        "not finished (train it with launch.py first)")
  config = ml_collections.ConfigDict(summary["config"])
  splits = load_splits(config.data)
  train_set = splits["train"]
  per_epoch = max(1, len(train_set) // config.data.batch_size)
  abstract = train.abstract_train_state(config, train_set.example_shape,
                                        per_epoch)
  manager = checkpoint.make_manager(workdir)
  try:
    if step is None and summary.get("steps") in manager.all_steps():
      step = summary["steps"]
    if step is None:
      state, _ = checkpoint.restore_latest(manager, abstract)
    else:
      state, _ = checkpoint.restore(manager, abstract, step)
  finally:
    manager.close()
  normalization = summary.get("normalization")
  if normalization:
    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
  else:
    mean, std = train.normalization_stats(config.data, train_set)
  return RestoredRun(os.path.abspath(workdir), summary, config, splits, state,
                     int(state.step), mean, std)


def predict(run, split="test", dataset=None):
  """(logits float [N, K], metrics dict) of `run`'s model on every example of
  `split` (or of `dataset`, an ArrayDataset such as shifted test images),
  through train.eval_step/evaluate (last batch padded and masked).
  """
  base = _task(run.config)
  task = dataclasses.replace(
      base,
      eval_examples=lambda logits, batch: {"logits": logits},
      finalize=lambda sums, examples: {
          **base.finalize(sums, {k: v for k, v in examples.items()
                                 if k != "logits"}),
          "logits": examples["logits"]})
  eval_fn = jax.jit(functools.partial(train.eval_step, mean=run.mean,
                                      std=run.std, task=task))
  dataset = run.splits[split] if dataset is None else dataset
  metrics = train.evaluate(eval_fn, run.state, dataset,
                           run.config.data.eval_batch_size, task)
  logits = np.asarray(metrics.pop("logits"))
  return logits, metrics


def _task(config):
  from cnn_jax import tasks  # pylint: disable=g-import-not-at-top
  return tasks.get_task(config.get("task", "classification"))


def _softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(shifted)
  return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------
# Markdown helpers.


def markdown_table(header, rows):
  """A GitHub-flavoured markdown table; numbers right-aligned."""
  def cell(value):
    return str(value).replace("|", "\\|").replace("\n", " ")

  align = ["---:" if rows and _is_number(rows[0][i]) else "---"
           for i in range(len(header))]
  lines = ["| " + " | ".join(map(cell, header)) + " |",
           "|" + "|".join(align) + "|"]
  lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
  return "\n".join(lines)


def _is_number(text):
  try:
    float(str(text).replace(",", "").replace("%", "").split(" ")[0])
    return True
  except ValueError:
    return False


def _fmt_seconds(seconds):
  if seconds is None:
    return "n/a"
  if seconds < 120:
    return f"{seconds:.1f} s"
  return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def _image(name, alt):
  return f"![{alt}]({name})"


def _sealed(text):
  """`text` with the marker line holding its hash appended."""
  digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
  return f"{text}\n{_MARKER}{digest} -->\n"


def is_untouched_report(path):
  """Whether report.md at `path` was written by this module and not edited
  since (its text matches the hash in its marker line)."""
  with open(path, encoding="utf-8") as f:
    content = f.read()
  head, marker, tail = content.rpartition(_MARKER)
  if not marker:
    return False
  digest, _, rest = tail.partition(" -->")
  if rest.strip():  # text added after the marker
    return False
  return hashlib.sha256(head[:-1].encode("utf-8")).hexdigest() == digest


# --------------------------------------------------------------------------
# A run.


def _config_section(config):
  c = config
  rows = [
      ("model", c.model.name),
      ("data", f"{c.data.name} ({c.data.get('data_dir') or 'bundled copy'})"),
      ("optimizer", f"{c.optim.name}, lr {c.optim.learning_rate:g}, "
                    f"{c.optim.schedule} schedule, weight decay "
                    f"{c.optim.get('weight_decay', 0):g}"),
      ("epochs x batch size", f"{c.train.num_epochs} x {c.data.batch_size}"),
      ("seed", c.seed),
  ]
  flat = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
  return ["## Config", "", markdown_table(("setting", "value"), rows), "",
          "<details><summary>Full config (summary.json)</summary>", "",
          "```json", flat, "```", "", "</details>", ""]


def _data_section(run):
  rows = [(split, len(data), str(list(data.example_shape)))
          for split, data in run.splits.items()]
  augment = {k: v for k, v in run.config.data.augment.to_dict().items() if v}
  class_names = run.splits["train"].class_names
  lines = ["## Data", "",
           markdown_table(("split", "examples", "example shape"), rows), "",
           "- normalisation (per channel, [0, 1] units): mean "
           f"({', '.join(f'{m:.4f}' for m in np.ravel(run.mean))}), std "
           f"({', '.join(f'{v:.4f}' for v in np.ravel(run.std))})",
           f"- augmentation: {augment or 'none'}"]
  if class_names:
    lines.append(f"- classes: {', '.join(class_names)}")
  return lines + [""]


def _model_section(run):
  model = train.create_model(run.config.model)
  rows, variables = model_summary.layer_table(
      model, run.splits["train"].example_shape, max_depth=2)
  total = model_summary.count_params(variables.get("params", {}))
  table = markdown_table(("module", "output shape", "params"),
                         [(p, str(list(s)), f"{n:,}") for p, s, n in rows])
  return [f"## Model: {run.config.model.name}", "",
          f"{total:,} parameters "
          f"({model_summary.count_params(variables.get('batch_stats', {})):,}"
          " batch-norm statistics besides). Per module (output shapes for one "
          "example):", "", table, ""], rows


def _metrics_section(run, metrics, records):
  summary = run.summary
  count = summary.get("test_examples") or metrics.get("count", 0)
  accuracy = summary.get("test_accuracy")
  rows = []
  if accuracy is not None:
    low, high = wilson_interval(round(accuracy * count), count)
    rows.append(("test accuracy (summary.json)", f"{accuracy:.4f}",
                 f"[{low:.4f}, {high:.4f}]"))
  if summary.get("test_loss") is not None:
    rows.append(("test loss (summary.json)", f"{summary['test_loss']:.4f}",
                 ""))
  for key, value in sorted((summary.get("test_metrics") or {}).items()):
    if key not in ("accuracy", "loss", "count") and isinstance(
        value, (int, float)):
      rows.append((f"test {key} (summary.json)", f"{value:.4f}", ""))
  if "accuracy" in metrics:
    rows.append((f"test accuracy, checkpoint of step {run.step} "
                 "re-evaluated", f"{metrics['accuracy']:.4f}", ""))
  train_rows = [r for r in records if r["split"] == "train"]
  if train_rows and "accuracy" in train_rows[-1]:
    last = train_rows[-1]
    rows.append((f"train accuracy (last logged window, step {last['step']})",
                 f"{last['accuracy']:.4f}", ""))
    rows.append(("train loss (last logged window)", f"{last['loss']:.4f}",
                 ""))
  lines = ["## Final metrics", "",
           markdown_table(("metric", "value", "95% CI"), rows), "",
           f"Test examples: {count:,} (all of the test split). The interval "
           "is the Wilson score interval over the test sample; this is a "
           "single seed, so seed-to-seed variation is not included (a sweep "
           "over seeds reports it)."]
  if accuracy is not None and "accuracy" in metrics:
    agree = abs(metrics["accuracy"] - accuracy) < 1e-6
    lines.append(
        "The re-evaluated checkpoint reproduces summary.json's accuracy."
        if agree else
        f"Note: the re-evaluated checkpoint gives {metrics['accuracy']:.4f}, "
        f"summary.json {accuracy:.4f} (different checkpoint or data?).")
  return lines + [""]


def _timing_section(summary):
  img_s = summary.get("train_img_per_s")
  rows = [("wall time (whole run)", _fmt_seconds(summary.get("wall_seconds"))),
          ("training throughput", f"{img_s:,.0f} img/s" if img_s else
           "n/a (too short to time after compilation)"),
          ("steps / epochs", f"{summary.get('steps')} / "
                             f"{summary.get('epochs')}"),
          ("device", summary.get("device", "n/a")),
          ("status", summary.get("status", "n/a"))]
  if summary.get("resumed_from_step"):
    rows.append(("resumed from step", summary["resumed_from_step"]))
  return ["## Timing and hardware", "",
          markdown_table(("measure", "value"), rows), ""]


def _figures(run, logits, layer_rows, out_dir):
  """Writes the prediction figures; returns markdown lines."""
  test_set = run.splits["test"]
  labels = np.asarray(test_set.labels)
  predictions = logits.argmax(axis=-1)
  k = logits.shape[-1]
  names = test_set.class_names or run.splits["train"].class_names or None
  matrix = visualize.confusion_matrix(labels, predictions, k)
  visualize.plot_confusion_matrix(
      matrix, os.path.join(out_dir, "confusion_matrix.png"), names)
  visualize.plot_per_class_accuracy(
      matrix, os.path.join(out_dir, "per_class_accuracy.png"), names)
  visualize.plot_misclassified(
      test_set.images, labels, predictions,
      os.path.join(out_dir, "misclassified.png"), names, _softmax(logits))
  recall = visualize.per_class_accuracy(matrix)
  names_or_ids = names or [str(i) for i in range(k)]
  worst = int(np.nanargmin(recall))
  off = matrix - np.diag(np.diag(matrix))
  true_c, pred_c = np.unravel_index(off.argmax(), off.shape)
  confusion = (f"most frequent confusion: {names_or_ids[true_c]} predicted "
               f"as {names_or_ids[pred_c]} ({off[true_c, pred_c]} times)"
               if off.any() else "no test example is misclassified")
  lines = ["## Errors", "",
           f"Lowest per-class accuracy: class {names_or_ids[worst]} "
           f"({recall[worst]:.2%}); {confusion}.", "",
           _image("confusion_matrix.png", "confusion matrix"), "",
           _image("per_class_accuracy.png", "per-class accuracy"), "",
           _image("misclassified.png", "misclassified examples"), ""]

  lines += ["## Inside the network", ""]
  kernel = visualize.first_conv_kernel(run.state.params)
  if kernel is not None:
    visualize.plot_filters(kernel, os.path.join(out_dir, "filters.png"))
    lines += [_image("filters.png", "first-layer filters"), ""]
  conv_layers = [path for path, shape, _ in layer_rows if len(shape) == 4]
  if conv_layers:
    image = test_set.images[np.array([0])]
    maps = visualize.feature_maps(run.state.apply_fn, run.variables,
                                  run.normalize(image)[0], conv_layers[0])
    visualize.plot_feature_maps(
        maps, os.path.join(out_dir, "feature_maps.png"), image[0],
        conv_layers[0], title=f"Feature maps of {conv_layers[0]} (module "
        f"output) for test image #0 (class {names_or_ids[labels[0]]})")
    lines += [_image("feature_maps.png", "feature maps"), ""]
  # One example of each of the first 8 classes present.
  picks = [int(np.flatnonzero(labels == c)[0]) for c in range(k)
           if (labels == c).any()][:8]
  if len(test_set.example_shape) == 3 and picks:
    images = test_set.images[np.array(picks)]
    maps = visualize.saliency(run.state.apply_fn, run.variables,
                              run.normalize(images))
    titles = [f"#{i}: {names_or_ids[labels[i]]} -> "
              f"{names_or_ids[predictions[i]]}" for i in picks]
    visualize.plot_saliency(images, maps,
                            os.path.join(out_dir, "saliency.png"), titles)
    lines += [_image("saliency.png", "saliency maps"), ""]
  return lines


def run_report(workdir, out_dir):
  """Writes the figures of the run in `workdir` into `out_dir`; returns the
  markdown text (without the marker)."""
  run = load_run(workdir)
  records = []
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    records = writers.drop_superseded(writers.read_metrics(workdir))
  summary = run.summary
  title = os.path.basename(os.path.normpath(run.workdir))
  lines = [f"# Report: {title}", "",
           f"Run folder: `{run.workdir}`; report of the checkpoint of step "
           f"{run.step}.", ""]
  accuracy = summary.get("test_accuracy")
  if accuracy is not None:
    lines += [f"**Test accuracy {accuracy:.2%}** on "
              f"{summary.get('test_examples', 0):,} test images, test loss "
              f"{summary.get('test_loss', float('nan')):.4f}, after "
              f"{summary.get('epochs')} epoch"
              f"{'' if summary.get('epochs') == 1 else 's'} "
              f"({_fmt_seconds(summary.get('wall_seconds'))} on "
              f"{summary.get('device', '?')}).", ""]
  lines += _config_section(run.config)
  lines += _data_section(run)
  model_lines, layer_rows = _model_section(run)
  lines += model_lines
  classification = run.config.get("task", "classification") == "classification"
  logits, metrics = predict(run) if classification else (None, {})
  lines += _metrics_section(run, metrics, records)
  if records:
    visualize.plot_learning_curves(
        records, os.path.join(out_dir, "learning_curves.png"))
    lines += ["## Learning curves", "",
              _image("learning_curves.png", "learning curves"), ""]
  lines += _timing_section(summary)
  if classification:
    lines += _figures(run, logits, layer_rows, out_dir)
  return "\n".join(lines)


# --------------------------------------------------------------------------
# A sweep.


def _member_dirs(workdir):
  members = os.path.join(workdir, "members")
  found = [d for d in glob.glob(os.path.join(members, "*")) if os.path.isdir(d)]
  return sorted(found, key=lambda d: (not os.path.basename(d).isdigit(),
                                      int(os.path.basename(d))
                                      if os.path.basename(d).isdigit()
                                      else 0, d))


def is_sweep(workdir):
  return bool(_member_dirs(workdir))


def _member_result(member_dir):
  """The member's result dict: summary.json, else the one other JSON file
  holding test metrics."""
  summary = workdirs.read_summary(member_dir)
  if summary is not None:
    return summary
  for path in sorted(glob.glob(os.path.join(member_dir, "*.json"))):
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if isinstance(data, dict) and "test_accuracy" in data:
      return data
  return None


def sweep_report(workdir, out_dir):
  """Writes the sweep's figures into `out_dir` (and the best member's run
  report into `out_dir`/best_member/); returns the markdown text."""
  members = []
  for member_dir in _member_dirs(workdir):
    result = _member_result(member_dir)
    if result is not None:
      members.append((os.path.basename(member_dir), member_dir, result))
  if not members:
    raise FileNotFoundError(f"{workdir!r} has members/ but no member holds "
                            "results (summary.json) yet")
  configs = [workdirs.flatten(m[2].get("config", {})) for m in members]
  keys = sorted(set().union(*configs))
  varying = [k for k in keys
             if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
  finished = [m[2].get("status", "finished") == "finished" for m in members]
  title = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  lines = [f"# Sweep report: {title}", "",
           f"Sweep folder: `{os.path.abspath(workdir)}`; {len(members)} "
           f"members (results in members/<k>/), {sum(finished)} finished. "
           "Config keys that vary: "
           f"{', '.join(f'`{k}`' for k in varying) or 'none'}.", ""]
  shown = varying[:6]
  rows = []
  for (name, _, result), flat in zip(members, configs):
    rows.append([name] + [flat.get(k, "") for k in shown] + [
        f"{result.get('test_accuracy', float('nan')):.4f}",
        f"{result.get('test_loss', float('nan')):.4f}",
        result.get("status", "finished")])
  rows.sort(key=lambda r: (r[-1] != "finished",
                           -float(r[-3]) if _is_number(r[-3]) else 0))
  lines += ["## Members (best first)", "",
            markdown_table(["member"] + shown + ["test accuracy", "test loss",
                                                 "status"], rows), ""]
  # Finished members whose configs agree except for the seed: mean and CI.
  groups = {}
  for (name, _, result), flat, ok in zip(members, configs, finished):
    if ok:
      setting = tuple((k, json.dumps(flat.get(k), sort_keys=True))
                      for k in varying if k != "seed")
      groups.setdefault(setting, []).append(result)
  group_rows = []
  for setting, results in groups.items():
    label = ", ".join(f"{k}={json.loads(v)}" for k, v in setting) or "all"
    row = [label, len(results)]
    for key in ("test_accuracy", "test_loss"):
      values = [r[key] for r in results if r.get(key) is not None]
      mean, half, n = mean_confidence_interval(values)
      row.append(f"{mean:.4f} ± {half:.4f}" if n > 1 else f"{mean:.4f}")
    group_rows.append(row)
  lines += ["## Over seeds", "",
            markdown_table(("setting", "seeds", "test accuracy (mean ± 95% "
                            "CI)", "test loss (mean ± 95% CI)"), group_rows),
            "", "Intervals: Student t over the seeds of each setting (mean ± "
            "t(0.975, n-1) s / sqrt(n)); a single seed has none. Diverged "
            "members are left out.", ""]
  curves = {}
  for name, member_dir, _ in members:
    if os.path.exists(os.path.join(member_dir, "metrics.jsonl")):
      records = [r for r in writers.drop_superseded(
          writers.read_metrics(member_dir)) if r["split"] == "test"]
      if records:
        curves[f"member {name} test"] = ([r["step"] for r in records],
                                         [r["accuracy"] for r in records])
  if curves:
    visualize.plot_curve_comparison(
        curves, os.path.join(out_dir, "sweep_test_accuracy.png"),
        "Test accuracy of each member", "test accuracy", xlabel="step")
    lines += ["## Curves", "",
              _image("sweep_test_accuracy.png", "test accuracy per member"),
              ""]
  top = sorted(os.path.basename(p) for p in
               glob.glob(os.path.join(workdir, "*.json")) +
               glob.glob(os.path.join(workdir, "*.md")) +
               glob.glob(os.path.join(workdir, "*.png")))
  if top:
    lines += ["## Sweep files", ""] + [f"- [{name}](../{name})"
                                       for name in top] + [""]
  sweep_summary = workdirs.read_summary(workdir) or {}
  wall = sweep_summary.get("wall_seconds")
  img_s = sweep_summary.get("train_img_per_s")
  devices = sorted({str(r.get("device")) for _, _, r in members
                    if r.get("device")} | ({sweep_summary["device"]}
                                           if "device" in sweep_summary
                                           else set()))
  lines += ["## Timing and hardware", "",
            f"- wall time of the sweep: {_fmt_seconds(wall)}" if wall else
            "- wall time of the sweep: n/a (no top-level summary.json)",
            f"- training throughput: {img_s:,.0f} img/s" if img_s else
            "- training throughput: n/a",
            f"- device: {', '.join(devices) or 'n/a'}", ""]
  # The best finished member as a single run: predictions and figures.
  best = next((m for m, _ in sorted(
      zip(members, finished), key=lambda mf: (not mf[1], -mf[0][2].get(
          "test_accuracy", 0.0))) if _), None)
  if best is not None and checkpoint.saved_steps(best[1]):
    best_dir = os.path.join(out_dir, "best_member")
    os.makedirs(best_dir, exist_ok=True)
    try:
      text = run_report(best[1], best_dir)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
      lines += [f"Best member {best[0]}: no run report ({e}).", ""]
    else:
      with open(os.path.join(best_dir, "report.md"), "w",
                encoding="utf-8") as f:
        f.write(_sealed(text))
      lines += ["## Best member", "",
                f"Member {best[0]} as a single run (config, model, "
                "confusion matrix, filters, feature maps, saliency): "
                "[best_member/report.md](best_member/report.md)", "",
                _image("best_member/confusion_matrix.png",
                       "confusion matrix of the best member"), ""]
  return "\n".join(lines)


# --------------------------------------------------------------------------
# Writing.


def render_html(markdown_text, title="report"):
  """HTML of the report: markdown-it-py when installed, else the markdown
  in a <pre> block (images and tables then stay as text)."""
  try:
    from markdown_it import MarkdownIt  # pylint: disable=g-import-not-at-top
    body = MarkdownIt("commonmark", {"html": True}).enable(
        "table").render(markdown_text)
  except ImportError:
    body = f"<pre>{html_lib.escape(markdown_text)}</pre>"
  style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;"
           "padding:0 1em}table{border-collapse:collapse}td,th{border:1px "
           "solid #ccc;padding:2px 8px}img{max-width:100%}")
  return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>"
          f"{html_lib.escape(title)}</title><style>{style}</style></head>"
          f"<body>\n{body}\n</body></html>\n")


def write_report(workdir, overwrite=False, html=False, report_dir=None):
  """Writes report.md (and report.html) with its PNGs for the run or sweep
  in `workdir`; returns the report.md path.

  Args:
    workdir: a finished run's folder, or a sweep's (with members/).
    overwrite: replace a report.md that was edited or not written here.
    html: also write report.html.
    report_dir: where to write; default `<workdir>/report`.
  Raises:
    ReportExistsError: report.md exists, was edited, and overwrite is False.
    FileNotFoundError: `workdir` holds no run or sweep results.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir not found: {workdir!r}")
  out_dir = report_dir or os.path.join(workdir, REPORT_DIR)
  path = os.path.join(out_dir, "report.md")
  if (os.path.exists(path) and not overwrite
      and not is_untouched_report(path)):
    raise ReportExistsError(
        f"{path} exists and was edited (or not written by cnn_jax.report); "
        "it is kept. Move it away, or pass --overwrite_report to replace it")
  os.makedirs(out_dir, exist_ok=True)
  if is_sweep(workdir):
    text = sweep_report(workdir, out_dir)
  else:
    text = run_report(workdir, out_dir)
  with open(path, "w", encoding="utf-8") as f:
    f.write(_sealed(text))
  if html:
    with open(os.path.join(out_dir, "report.html"), "w",
              encoding="utf-8") as f:
      f.write(render_html(text, os.path.basename(os.path.normpath(workdir))))
  return path
