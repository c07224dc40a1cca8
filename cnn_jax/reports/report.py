"""A run's report: the markdown text of report.md and the PNGs beside it.

entry.write_report (--mode=report) writes it for a run folder:

  python launch.py --mode=report --workdir=runs/mnist

The report holds the key settings and the full config; the data (splits,
shapes, normalisation, augmentation); the model's parameters per layer; the
final test metrics from summary.json with a 95% confidence interval over the
test sample, checked against a re-evaluation of the final checkpoint; timing
(wall time, img/s, device); and figures: learning curves, confusion matrix,
per-class accuracy, misclassified examples, first-layer filters, feature
maps of the first conv layer and saliency maps. The figures that need
predictions come from the final checkpoint (restored_run.py), evaluated on
the whole test split.

A sweep's report (report_sweep.py) holds its best member's run report.
"""

import json
import math
import os

import numpy as np

from cnn_jax.models import summary as model_summary
from cnn_jax.reports import markdown
from cnn_jax.reports import restored_run
from cnn_jax.reports import visualize
from cnn_jax.reports import visualize_model
from cnn_jax.runs import writers
from cnn_jax.training import steps


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
  return ["## Config", "",
          markdown.markdown_table(("setting", "value"), rows), "",
          "<details><summary>Full config (summary.json)</summary>", "",
          "```json", flat, "```", "", "</details>", ""]


def _data_section(run):
  rows = [(split, len(data), str(list(data.example_shape)))
          for split, data in run.splits.items()]
  augment = {k: v for k, v in run.config.data.augment.to_dict().items() if v}
  class_names = run.splits["train"].class_names
  lines = ["## Data", "",
           markdown.markdown_table(("split", "examples", "example shape"),
                                   rows), "",
           "- normalisation (per channel, [0, 1] units): mean "
           f"({', '.join(f'{m:.4f}' for m in np.ravel(run.mean))}), std "
           f"({', '.join(f'{v:.4f}' for v in np.ravel(run.std))})",
           f"- augmentation: {augment or 'none'}"]
  if class_names:
    lines.append(f"- classes: {', '.join(class_names)}")
  return lines + [""]


def _model_section(run):
  model = steps.create_model(run.config.model)
  rows, variables = model_summary.layer_table(
      model, run.splits["train"].example_shape, max_depth=2)
  total = model_summary.count_params(variables.get("params", {}))
  table = markdown.markdown_table(
      ("module", "output shape", "params"),
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
           markdown.markdown_table(("metric", "value", "95% CI"), rows), "",
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
  rows = [("wall time (whole run)",
           markdown.fmt_seconds(summary.get("wall_seconds"))),
          ("training throughput", f"{img_s:,.0f} img/s" if img_s else
           "n/a (too short to time after compilation)"),
          ("steps / epochs", f"{summary.get('steps')} / "
                             f"{summary.get('epochs')}"),
          ("device", summary.get("device", "n/a")),
          ("status", summary.get("status", "n/a"))]
  if summary.get("resumed_from_step"):
    rows.append(("resumed from step", summary["resumed_from_step"]))
  return ["## Timing and hardware", "",
          markdown.markdown_table(("measure", "value"), rows), ""]


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
           markdown.markdown_image("confusion_matrix.png",
                                   "confusion matrix"), "",
           markdown.markdown_image("per_class_accuracy.png",
                                   "per-class accuracy"), "",
           markdown.markdown_image("misclassified.png",
                                   "misclassified examples"), ""]

  lines += ["## Inside the network", ""]
  kernel = visualize_model.first_conv_kernel(run.state.params)
  if kernel is not None:
    visualize_model.plot_filters(kernel, os.path.join(out_dir, "filters.png"))
    lines += [markdown.markdown_image("filters.png", "first-layer filters"), ""]
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
    lines += [markdown.markdown_image("feature_maps.png", "feature maps"), ""]
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
    lines += [markdown.markdown_image("saliency.png", "saliency maps"), ""]
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
              f"({markdown.fmt_seconds(summary.get('wall_seconds'))} on "
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
              markdown.markdown_image("learning_curves.png",
                                      "learning curves"), ""]
  lines += _timing_section(summary)
  if classification:
    lines += _figures(run, logits, layer_rows, out_dir)
  return "\n".join(lines)
