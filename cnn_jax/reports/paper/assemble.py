"""launch.py --mode=paper: finished runs and sweeps in, a paper folder out.

  python launch.py --mode=paper --workdir=paper/ \\
      --runs=scratch=runs/scratch_seed*,fine-tune=runs/fine_tune_seed* \\
      [--paper_title='...'] [--overwrite_report]

writes into --workdir:

  paper.tex           the document (title, abstract, introduction, data,
                      method, experiments, discussion); \\todo{...} marks
                      what only the author can write
  generated/*.tex     the text filled from the runs (data, method,
                      experiments) and the macros; rewritten every time
  tables/*.tex        results (95% intervals), data, cost; rewritten
  figures/*.pdf       learning curves, confusion matrix, examples; rewritten
  references.bib      the citations of the datasets, models, optimizers
  cnnjax_icml.sty     the built-in ICML-geometry style (used when no
                      icml20XX.sty lies beside paper.tex)
  paper.pdf           when pdflatex is installed; the command prints the
                      page count and what to drop over 4 pages

paper.tex and references.bib are the author's once edited: rerunning
regenerates them only while they are as written (a hash in their last
line); an edited one is kept and the fresh version written beside it as
<name>.new (--overwrite_report replaces it).
"""

import dataclasses
import os
from typing import List

from cnn_jax.reports.paper import best_run
from cnn_jax.reports.paper import bibliography
from cnn_jax.reports.paper import collect
from cnn_jax.reports.paper import compile as compile_lib
from cnn_jax.reports.paper import facts as facts_lib
from cnn_jax.reports.paper import figures
from cnn_jax.reports.paper import latex
from cnn_jax.reports.paper import sections
from cnn_jax.reports.paper import tables

_CAPTION_CHARS_PER_LINE = 60
_LINE_IN = 0.14
_FLOAT_GAP_IN = 0.35


@dataclasses.dataclass
class PaperResult:
  folder: str
  written: List[str]     # files written (paper.tex only when regenerated)
  kept: List[str]        # edited files kept (fresh text in <name>.new)
  notes: List[str]       # figures left out and why
  compiled: compile_lib.CompileResult
  floats: List[compile_lib.Float]

  def lines(self):
    """What the command prints."""
    out = [f"paper folder: {self.folder}"]
    out += [f"kept {path} (edited since written; the regenerated text is "
            f"in {os.path.basename(path)}.new)" for path in self.kept]
    out += self.notes
    return out + compile_lib.advice(self.compiled, self.floats)


def _caption_in(caption):
  return (len(caption) // _CAPTION_CHARS_PER_LINE + 1) * _LINE_IN


def _document(folder, title, groups, made_figures, floats_text):
  keywords = ", ".join(sorted({latex.escape(bibliography.data_name(
      g.config.get("data", {}))) for g in groups} | {"CNN"}))
  body = [
      latex.preamble(folder, title),
      r"\begin{document}",
      latex.title_block(title, keywords),
      r"\begin{abstract}",
      latex.todo("The problem, the data, what was compared, the headline "
                 "result with its interval (Table~\\ref{tab:results}), and "
                 "what it means; 4-6 sentences."),
      r"\end{abstract}", "",
      r"\section{Introduction}",
      latex.todo("The problem and why it matters; the question this "
                 "project answers; what was done and found."), "",
      r"\section{Data}", r"\input{generated/data}",
      floats_text["tab:data"],
      latex.todo("Where the data comes from, how it was collected and "
                 "labelled, and what makes it hard."), "",
      r"\section{Method}", r"\input{generated/method}",
      latex.todo("Why these models and settings; what the comparison "
                 "isolates."), "",
      r"\section{Experiments}", r"\input{generated/experiments}",
      floats_text["tab:results"], floats_text["tab:cost"]]
  body += [floats_text[f.label] for f in made_figures]
  body += [latex.todo("What the results show, with the intervals: which "
                      "differences are larger than the seed-to-seed "
                      "spread?"), "",
           r"\section{Discussion}",
           latex.todo("Interpretation, limitations (data size, seeds, "
                      "compute), and what to try next."), "",
           latex.ending(folder)]
  return "\n".join(body)


def write_paper(specs, folder, title="", overwrite=False, compile_pdf=True,
                predictions=True):
  """Writes the paper folder for the (label, path) `specs` (see the module
  docstring); compiles it when pdflatex is there (and `compile_pdf`).
  `predictions=False` skips re-evaluating the best run's checkpoint (no
  confusion matrix or examples). Returns PaperResult.

  Raises:
    collect.RunFolderError: a run is missing, unfinished, or mislabelled.
  """
  groups = collect.collect(specs)
  facts = facts_lib.facts_for_groups(groups)
  for sub in ("figures", "tables", "generated"):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
  notes = [f"left out: {name}" for g in groups for name in g.left_out]
  made = []
  if any(r.records for g in groups for r in g.runs):
    made.append(figures.plot_learning_curves(
        groups, os.path.join(folder, "figures", "learning_curves.pdf")))
  if predictions:
    made += best_run.best_run_figures(groups, folder, notes)

  table_specs = [
      ("data", tables.data_table(groups, facts),
       "The data of each run: examples per split, input shape, classes.",
       "tab:data", 5, len(groups)),
      ("results", tables.results_table(groups, facts),
       tables.results_caption(groups), "tab:results", 9, len(groups)),
      ("cost", tables.cost_table(groups, facts),
       "Cost: parameters, training length, wall time of the whole run "
       "(mean over seeds), training throughput and hardware.", "tab:cost",
       4, len(groups))]
  floats, floats_text = [], {}
  for name, text, caption, label, priority, rows in table_specs:
    latex.write_generated(folder, f"tables/{name}.tex", text)
    floats_text[label] = latex.table(f"tables/{name}", caption, label)
    floats.append(compile_lib.Float(
        f"tables/{name}.tex", label, (rows + 2) * 0.17 + _caption_in(caption)
        + _FLOAT_GAP_IN, priority))
  for fig in made:
    floats_text[fig.label] = latex.figure(f"figures/{fig.name}.pdf",
                                          fig.caption, fig.label)
    floats.append(compile_lib.Float(
        f"figures/{fig.name}.pdf", fig.label, fig.height_in
        + _caption_in(fig.caption) + _FLOAT_GAP_IN, fig.priority))

  latex.write_generated(folder, "generated/macros.tex", latex.MACROS)
  latex.write_generated(folder, "generated/data.tex",
                        sections.data_text(groups, facts))
  latex.write_generated(folder, "generated/method.tex",
                        sections.method_text(groups, facts))
  latex.write_generated(folder, "generated/experiments.tex",
                        sections.experiments_text(
                            groups, [f.label for f in made]))
  latex.write_generated(folder, f"{latex.BUILTIN_STYLE}.sty", latex.STYLE)
  written, kept = [], []
  title = latex.escape(title) if title else latex.todo("Title")
  for name, text in (
      ("references.bib", bibliography.bibtex(
          bibliography.all_keys([g.config for g in groups]))),
      ("paper.tex", _document(folder, title, groups, made, floats_text))):
    path = os.path.join(folder, name)
    (written if latex.write_unless_edited(path, text, overwrite)
     else kept).append(path)
  compiled = (compile_lib.compile_tex(folder, "paper") if compile_pdf else
              compile_lib.CompileResult(None, None, None,
                                        "not compiled (compile_pdf=False)"))
  return PaperResult(folder, written, kept, notes, compiled, floats)
