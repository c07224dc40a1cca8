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
predictions come from the final checkpoint (restored_run.py), evaluated on
the whole test split.

A sweep's report (a workdir with members/<k>/) is written by
report_sweep.py, on the markdown helpers and the run report of this module.

An existing report is never overwritten silently: report.md ends with a
marker holding a hash of its text. A report.md whose text still matches its
marker (written by this module and not edited since) is regenerated; one
that was edited, or was not written by this module, is kept and
ReportExistsError is raised, unless `overwrite=True` (--overwrite_report).
"""

import hashlib
import html as html_lib
import json
import math
import os

import numpy as np

from cnn_jax.reports import restored_run
from cnn_jax.training import train
from cnn_jax.reports import visualize
from cnn_jax.reports import visualize_model
from cnn_jax.runs import writers
from cnn_jax.models import summary as model_summary

REPORT_DIR = "report"
_MARKER = "<!-- cnn_jax.report sha256="


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

  align = ["---:" if rows and is_number(rows[0][i]) else "---"
           for i in range(len(header))]
  lines = ["| " + " | ".join(map(cell, header)) + " |",
           "|" + "|".join(align) + "|"]
  lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
  return "\n".join(lines)


def is_number(text):
  """Whether a table cell reads as a number: '1,234', '98.5%', '0.97 ± 0.01'
  (markdown_table right-aligns those columns)."""
  try:
    float(str(text).replace(",", "").replace("%", "").split(" ")[0])
    return True
  except ValueError:
    return False


def fmt_seconds(seconds):
  """'12.3 s', or minutes and seconds from 120 s on; 'n/a' for None."""
  if seconds is None:
    return "n/a"
  if seconds < 120:
    return f"{seconds:.1f} s"
  return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def markdown_image(name, alt):
  """A markdown image link to `name` (relative to report.md)."""
  return f"![{alt}]({name})"


def _sealed(text):
  """`text` with the marker line holding its hash appended."""
  digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
  return f"{text}\n{_MARKER}{digest} -->\n"


def write_sealed(path, text):
  """Writes `text` to the report.md `path` with its marker line, so a later
  report may regenerate it unless it is edited."""
  with open(path, "w", encoding="utf-8") as f:
    f.write(_sealed(text))


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
  rows = [("wall time (whole run)", fmt_seconds(summary.get("wall_seconds"))),
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
           markdown_image("confusion_matrix.png", "confusion matrix"), "",
           markdown_image("per_class_accuracy.png", "per-class accuracy"), "",
           markdown_image("misclassified.png", "misclassified examples"), ""]

  lines += ["## Inside the network", ""]
  kernel = visualize_model.first_conv_kernel(run.state.params)
  if kernel is not None:
    visualize_model.plot_filters(kernel, os.path.join(out_dir, "filters.png"))
    lines += [markdown_image("filters.png", "first-layer filters"), ""]
  conv_layers = [path for path, shape, _ in layer_rows if len(shape) == 4]
  if conv_layers:
    image = test_set.images[np.array([0])]
    maps = visualize_model.feature_maps(run.state.apply_fn, run.variables,
                                        run.normalize(image)[0],
                                        conv_layers[0])
    visualize_model.plot_feature_maps(
        maps, os.path.join(out_dir, "feature_maps.png"), image[0],
        conv_layers[0], title=f"Feature maps of {conv_layers[0]} (module "
        f"output) for test image #0 (class {names_or_ids[labels[0]]})")
    lines += [markdown_image("feature_maps.png", "feature maps"), ""]
  # One example of each of the first 8 classes present.
  picks = [int(np.flatnonzero(labels == c)[0]) for c in range(k)
           if (labels == c).any()][:8]
  if len(test_set.example_shape) == 3 and picks:
    images = test_set.images[np.array(picks)]
    maps = visualize_model.saliency(run.state.apply_fn, run.variables,
                                    run.normalize(images))
    titles = [f"#{i}: {names_or_ids[labels[i]]} -> "
              f"{names_or_ids[predictions[i]]}" for i in picks]
    visualize_model.plot_saliency(images, maps,
                                  os.path.join(out_dir, "saliency.png"),
                                  titles)
    lines += [markdown_image("saliency.png", "saliency maps"), ""]
  return lines


def run_report(workdir, out_dir):
  """Writes the figures of the run in `workdir` into `out_dir`; returns the
  markdown text (without the marker)."""
  run = restored_run.load_run(workdir)
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
              f"({fmt_seconds(summary.get('wall_seconds'))} on "
              f"{summary.get('device', '?')}).", ""]
  lines += _config_section(run.config)
  lines += _data_section(run)
  model_lines, layer_rows = _model_section(run)
  lines += model_lines
  classification = run.config.get("task", "classification") == "classification"
  logits, metrics = restored_run.predict(run) if classification else (None, {})
  lines += _metrics_section(run, metrics, records)
  if records:
    visualize.plot_learning_curves(
        records, os.path.join(out_dir, "learning_curves.png"))
    lines += ["## Learning curves", "",
              markdown_image("learning_curves.png", "learning curves"), ""]
  lines += _timing_section(summary)
  if classification:
    lines += _figures(run, logits, layer_rows, out_dir)
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
  # Imported here: report_sweep builds on this module (a sweep's report holds
  # its best member's run report), so a top-level import would be a cycle.
  from cnn_jax.reports import report_sweep  # pylint: disable=g-import-not-at-top
  if report_sweep.is_sweep(workdir):
    text = report_sweep.sweep_report(workdir, out_dir)
  else:
    text = run_report(workdir, out_dir)
  write_sealed(path, text)
  if html:
    with open(os.path.join(out_dir, "report.html"), "w",
              encoding="utf-8") as f:
      f.write(render_html(text, os.path.basename(os.path.normpath(workdir))))
  return path
