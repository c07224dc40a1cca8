"""launch.py --mode=proposal: the 1-1.5 page project proposal, before any
training, from a config and its data source.

  python launch.py --mode=proposal --config=configs/cifar10_simple.py \\
      --workdir=proposal/ [--paper_title='...']

writes proposal.tex (same ICML layout as the paper: cnnjax_icml.sty or the
official style beside it), generated/ (data statistics and the planned
models), references.bib and proposal.pdf when pdflatex is installed, and
prints its page count. Sections: problem (\\todo), data with its statistics
(examples per split and per class, input shape, pixel mean/std, measured by
loading the data source), planned baselines and models (the config's model
with its parameter count, a majority-class baseline's accuracy computed from
the test split's labels, and \\todo for the others), evaluation, timeline
(\\todo). proposal.tex follows paper.tex's rule: an edited one is kept.
"""

import os

import ml_collections
import numpy as np

from cnn_jax.reports.paper import bibliography
from cnn_jax.reports.paper import compile as compile_lib
from cnn_jax.reports.paper import facts as facts_lib
from cnn_jax.reports.paper import latex
from cnn_jax.reports.paper import sections
from cnn_jax.reports.paper import tables


def _statistics_rows(fact):
  rows = []
  for split, size in fact.split_sizes.items():
    counts = fact.class_counts.get(split) or []
    spread = (f"{min(counts):,}--{max(counts):,}" if counts else "--")
    rows.append([latex.escape(split), f"{size:,}", spread])
  return rows


def majority_baseline(fact):
  """(class index, its test accuracy) of always predicting the training
  split's most frequent class; None for tasks without class counts."""
  train = fact.class_counts.get("train") or []
  test = fact.class_counts.get("test") or []
  if fact.task != "classification" or not train or not test:
    return None
  majority = int(np.argmax(train))
  return majority, test[majority] / max(sum(test), 1)


def data_text(config, fact):
  data = config.data.to_dict()
  name = data.get("name", "")
  shape = "\\times".join(str(d) for d in fact.example_shape)
  text = (f"We use {latex.escape(fact.data_name)}"
          f"{bibliography.cite(bibliography.cite_for_data(name))}: "
          f"{sum(fact.split_sizes.values()):,} examples of shape ${shape}$"
          + (f" in {fact.num_classes} classes" if fact.num_classes else "")
          + " (Table~\\ref{tab:statistics}).")
  if fact.class_names:
    text += (" Classes: " + ", ".join(latex.escape(c)
                                       for c in fact.class_names[:20]) + ".")
  if fact.pixel_mean:
    text += (" Pixel mean "
             f"{', '.join(f'{m:.3f}' for m in fact.pixel_mean)} and std "
             f"{', '.join(f'{s:.3f}' for s in fact.pixel_std)} (per channel, "
             "$[0, 1]$ units, training split).")
  counts = fact.class_counts.get("train") or []
  if counts:
    ratio = max(counts) / max(min(counts), 1)
    text += (f" The largest training class is {ratio:.1f}$\\times$ the "
             "smallest" + (" (balanced)." if ratio < 1.5 else
                           ": accuracy alone can mislead, so we also report "
                           "per-class recall."))
  aug = sections.augmentation_text(config.to_dict())
  text += f" Planned augmentation: {aug}."
  return text + "\n"


def models_text(config, fact):
  model = config.model.name
  items = []
  baseline = majority_baseline(fact)
  if baseline:
    index, accuracy = baseline
    name = (fact.class_names[index] if fact.class_names else str(index))
    items.append(f"\\item Majority class (always `{latex.escape(name)}'): "
                 f"{tables.percent(accuracy)}\\% test accuracy, the floor "
                 "every model must beat.")
  items.append(f"\\item \\texttt{{{latex.escape(model)}}}"
               f"{bibliography.cite(bibliography.cite_for_model(model))} "
               f"({fact.parameters:,} parameters), trained with "
               f"{latex.escape(config.optim.name)}, learning rate "
               f"{config.optim.learning_rate:g}, {config.train.num_epochs} "
               f"epochs of batches of {config.data.batch_size}.")
  items.append("\\item " + latex.todo("Further baselines and models (e.g. "
                                      "a linear model, a deeper CNN, "
                                      "transfer from a pretrained network) "
                                      "and what each comparison isolates."))
  return "\\begin{itemize}\n" + "\n".join(items) + "\n\\end{itemize}\n"


def _document(folder, title, keywords):
  return "\n".join([
      latex.preamble(folder, title),
      r"\begin{document}",
      latex.title_block(title, keywords),
      r"\section{Problem}",
      latex.todo("The problem, why it matters, and the question the project "
                 "answers (one paragraph)."), "",
      r"\section{Data}", r"\input{generated/data}",
      latex.table("tables/statistics", "Examples per split and per class "
                  "(fewest--most).", "tab:statistics"),
      latex.todo("Where the data comes from, its licence, and how the "
                 "splits are made."), "",
      r"\section{Planned baselines and models}",
      r"\input{generated/models}", "",
      r"\section{Evaluation}",
      latex.todo("Metrics (with 95\\% intervals over seeds or the test "
                 "sample), and the experiments that answer the question."),
      "", r"\section{Timeline and risks}",
      latex.todo("Milestones until the report; what could go wrong and the "
                 "fallback."), "",
      latex.ending(folder)])


def write_proposal(config, folder, title="", overwrite=False,
                   compile_pdf=True):
  """Writes the proposal folder for `config` (a ConfigDict); returns
  (lines to print, CompileResult)."""
  if not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)
  fact = facts_lib.facts_for_config(config)
  for sub in ("generated", "tables"):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
  latex.write_generated(folder, "generated/macros.tex", latex.MACROS)
  latex.write_generated(folder, "generated/data.tex", data_text(config, fact))
  latex.write_generated(folder, "generated/models.tex",
                        models_text(config, fact))
  latex.write_generated(folder, "tables/statistics.tex", latex.tabular(
      "lrr", ["Split", "Examples", "Per class"], _statistics_rows(fact)))
  latex.write_generated(folder, f"{latex.BUILTIN_STYLE}.sty", latex.STYLE)
  title = latex.escape(title) if title else latex.todo("Project title")
  keys = bibliography.all_keys([config.to_dict()])
  lines = [f"proposal folder: {folder}"]
  for name, text in (("references.bib", bibliography.bibtex(keys)),
                     ("proposal.tex", _document(
                         folder, title, latex.escape(fact.data_name)))):
    path = os.path.join(folder, name)
    if not latex.write_unless_edited(path, text, overwrite):
      lines.append(f"kept {path} (edited since written; the regenerated "
                   f"text is in {name}.new)")
  compiled = (compile_lib.compile_tex(folder, "proposal") if compile_pdf
              else compile_lib.CompileResult(None, None, None,
                                             "not compiled"))
  if compiled.pdf:
    lines.append(f"{compiled.pdf}: {compiled.pages} page"
                 f"{'s' if compiled.pages != 1 else ''} (aim: 1-1.5)")
  else:
    lines.append(compiled.message)
  return lines, compiled
