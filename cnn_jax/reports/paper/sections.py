"""The generated text of the paper's sections (generated/*.tex), from the
runs' configs and summary.json and the measured facts (facts.py):

  data.tex         datasets with citations, split sizes, input shape,
                   classes, normalisation and augmentation
  method.tex       per group: model (cited) and parameter count, optimizer
                   and schedule (cited), epochs, batch size, regularisation,
                   transfer initialisation, seeds; the software
  experiments.tex  the headline result with its interval, and pointers to
                   the tables and figures

What only the author can say (motivation, interpretation) stays a \\todo in
paper.tex.
"""

import json

from cnn_jax.reports.paper import bibliography
from cnn_jax.reports.paper import collect
from cnn_jax.reports.paper import tables
from cnn_jax.reports.paper.latex import escape

_AUGMENT_TEXT = {
    "crop_padding": "random crops after {v}-pixel zero padding",
    "flip": "horizontal flips", "translate": "random translations by up to "
    "{v} of the size", "resized_crop_min_scale": "random resized crops "
    "(scale $\\geq$ {v})", "brightness": "brightness jitter ({v})",
    "contrast": "contrast jitter ({v})", "saturation": "saturation jitter "
    "({v})", "cutout": "cutout ({v} pixels)", "mixup_alpha": "mixup "
    "($\\alpha={v}$)", "cutmix_alpha": "CutMix ($\\alpha={v}$)"}
_OPTIM_NAMES = {"sgd": "SGD", "momentum": "SGD with momentum",
                "nesterov": "SGD with Nesterov momentum", "adam": "Adam",
                "adamw": "AdamW"}
_SCHEDULES = {"constant": "constant", "cosine": "cosine",
              "warmup_cosine": "warm-up + cosine", "one_cycle": "one-cycle"}


def augmentation_text(config):
  """'random crops ..., horizontal flips' (with citations), or 'none'."""
  augment = (config.get("data", {}).get("augment") or {})
  parts = []
  for key, text in _AUGMENT_TEXT.items():
    value = augment.get(key)
    if value:
      parts.append(text.format(v=value) + bibliography.cite(
          bibliography.AUGMENT_CITES.get(key)))
  return ", ".join(parts) or "none"


def _join(names):
  names = list(names)
  return names[0] if len(names) == 1 else (
      ", ".join(names[:-1]) + " and " + names[-1])


def data_text(groups, facts):
  """The Data section's generated paragraph(s)."""
  datasets = {}
  for group in groups:
    fact = facts[group.label]
    key = (fact.data_name, tuple(sorted(fact.split_sizes.items())),
           fact.example_shape)
    datasets.setdefault(key, []).append(group)
  paragraphs = []
  for (_, sizes, shape), members in datasets.items():
    fact = facts[members[0].label]
    config = members[0].config
    name = config.get("data", {}).get("name", "")
    who = ("All runs use" if len(datasets) == 1 else
           f"{_join(escape(g.label) for g in members)} use")
    order = {"train": 0, "val": 1, "test": 2}
    sizes = sorted(sizes, key=lambda item: (order.get(item[0], 3), item[0]))
    split_text = _join(f"{n:,} {s}" for s, n in sizes) + " examples"
    classes = (f" in {fact.num_classes} classes" if fact.num_classes
               else "")
    shape_text = "\\times".join(str(d) for d in shape)
    text = (f"{who} {escape(fact.data_name)}"
            f"{bibliography.cite(bibliography.cite_for_data(name))}: "
            f"{split_text} of shape "
            f"${shape_text}${classes} "
            "(Table~\\ref{tab:data}).")
    if any(len({json.dumps(r.config.get("data", {}).get("data_dir"))
                for r in g.runs}) > 1 for g in members):
      text += (" Each seed has its own data file (a training subset drawn "
               "with that seed); the sizes are the first seed's.")
    counts = fact.class_counts.get("train") or []
    if counts and fact.task == "classification":
      text += (f" The training classes hold {min(counts):,} examples each."
               if min(counts) == max(counts) else
               f" The training classes hold {min(counts):,} to "
               f"{max(counts):,} examples each.")
    if fact.pixel_mean:
      text += (" Inputs are scaled to $[0, 1]$ and standardised per channel "
               f"(mean {', '.join(f'{m:.3f}' for m in fact.pixel_mean)}, "
               f"std {', '.join(f'{s:.3f}' for s in fact.pixel_std)}, "
               "measured on the training split).")
    augment = {augmentation_text(g.config) for g in members}
    if len(augment) == 1:
      text += f" Training augmentation: {augment.pop()}."
    else:
      text += " Training augmentation: " + "; ".join(
          f"{escape(g.label)}: {augmentation_text(g.config)}"
          for g in members) + "."
    paragraphs.append(text)
  return "\n\n".join(paragraphs) + "\n"


def _transfer_text(config):
  transfer = config.get("transfer") or {}
  if not transfer.get("init_from"):
    return ""
  mode = transfer.get("mode", "")
  how = {"feature_extraction": "with the pretrained layers frozen (only "
         "the new head trains)",
         "fine_tune": "fine-tuning all layers"}.get(mode, "")
  scale = transfer.get("backbone_lr_scale")
  if mode == "fine_tune" and scale not in (None, 1, 1.0):
    how += f" (pretrained layers at {scale:g}$\\times$ the learning rate)"
  return (f" Starts from the weights of a pretrained run"
          f"{bibliography.cite('yosinski2014transfer')}, {how}.")


def _method_pieces(group, fact):
  """The sentences describing one group: model, optimizer, length,
  augmentation, transfer, seeds (each ends with '.'; '' when it has nothing to say)."""
  config = group.config
  model = config.get("model", {})
  optim = config.get("optim", {})
  train = config.get("train", {})
  summary = group.runs[0].summary
  model_name = model.get("name", "?")
  optim_name, schedule = optim.get("name"), optim.get("schedule")
  model_text = (f"\\texttt{{{escape(model_name)}}}"
                f"{bibliography.cite(bibliography.cite_for_model(model_name))}"
                f" with {fact.parameters:,} parameters"
                + (", batch normalisation" + bibliography.cite(
                    "ioffe2015batchnorm") if model.get("use_batchnorm")
                   else "")
                + (f", dropout {model['dropout_rate']:g}"
                   if model.get("dropout_rate") else "") + ".")
  optim_text = (f"{_OPTIM_NAMES.get(optim_name, escape(optim_name))}"
                f"{bibliography.cite(bibliography.OPTIM_CITES.get(optim_name))}"
                f" with learning rate {optim.get('learning_rate', 0):g} and a "
                f"{_SCHEDULES.get(schedule, escape(schedule))} schedule"
                f"{bibliography.cite(bibliography.SCHEDULE_CITES.get(schedule))}"
                + (f", weight decay {optim['weight_decay']:g}"
                   if optim.get("weight_decay") else "")
                + (f", label smoothing {train['label_smoothing']:g}"
                   if train.get("label_smoothing") else "") + ".")
  steps = summary.get("steps")
  length_text = (f"{summary.get('epochs', train.get('num_epochs'))} epochs ("
                 + (f"{steps:,}" if isinstance(steps, int) else "?")
                 + " steps) of batches of "
                 f"{config.get('data', {}).get('batch_size', '?')}.")
  seeds = collect.describe_seeds(group)
  seeds_text = (f"Seed{'s' if len(group.runs) > 1 else ''} {seeds}." if seeds
                else "")
  augment_text = f"Augmentation: {augmentation_text(config)}."
  return [model_text, optim_text, length_text, augment_text,
          _transfer_text(config).strip(), seeds_text]


def method_text(groups, facts):
  """The Method section's generated text: what all groups share, once, then
  an item per group with what is its own."""
  pieces = [_method_pieces(g, facts[g.label]) for g in groups]
  shared = [i for i in range(len(pieces[0]))
            if len({p[i] for p in pieces}) == 1 and pieces[0][i]]
  text = ""
  if len(groups) > 1 and shared:
    text = ("All runs: " + " ".join(pieces[0][i] for i in shared) + "\n")
  else:
    shared = []
  items = [f"\\item \\textbf{{{escape(g.label)}}}: " + (" ".join(
      p[i] for i in range(len(p)) if i not in shared and p[i]) or "as above.")
           for g, p in zip(groups, pieces)]
  software = ("All models are implemented and trained with cnn\\_jax on "
              f"JAX{bibliography.cite('jax2018github')}, "
              f"Flax{bibliography.cite('flax2020github')} and "
              f"Optax{bibliography.cite('deepmind2020jax')}; "
              "the loss is the softmax cross-entropy unless stated.")
  return (text + "\\begin{itemize}\n" + "\n".join(items)
          + "\n\\end{itemize}\n" + software + "\n")


def experiments_text(groups, figure_labels):
  """The Experiments section's generated paragraph."""
  best = collect.best_group(groups)
  mean, low, high, how = collect.headline_interval(best)
  interval = ""
  if low is not None:
    interval = (f" (95\\% interval {tables.interval_text(low, high)}, "
                + ("over seeds" if how == "t" else "Wilson, over the test "
                   "examples") + ")")
  devices = sorted({str(r.summary.get("device", "?")) for g in groups
                    for r in g.runs})
  text = (f"Table~\\ref{{tab:results}} gives the test results of "
          f"{len(groups)} configuration{'s' if len(groups) > 1 else ''}"
          f" ({sum(len(g.runs) for g in groups)} runs). "
          f"The best is \\textbf{{{escape(best.label)}}} with "
          f"{tables.percent(mean)}\\% test accuracy{interval}.")
  refs = {"fig:curves": "Figure~\\ref{fig:curves} shows the learning "
                        "curves",
          "fig:confusion": "Figure~\\ref{fig:confusion} the confusion "
                           "matrix of the best run",
          "fig:examples": "Figure~\\ref{fig:examples} example predictions",
          "fig:heatmaps": "Figure~\\ref{fig:heatmaps} where the best "
                          "run looks (Grad-CAM)",
          "fig:masks": "Figure~\\ref{fig:masks} its predicted masks"}
  shown = [refs[label] for label in figure_labels if label in refs]
  if shown:
    text += " " + _join(shown) + "."
  text += (" Table~\\ref{tab:cost} gives the parameters, training length, "
           f"wall time and throughput; the runs used {escape(_join(devices))}.")
  return text + "\n"
