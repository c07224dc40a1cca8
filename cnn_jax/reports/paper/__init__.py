"""Finished runs -> a 4-page ICML-format paper (and a proposal before any
training): launch.py --mode=paper / --mode=proposal.

  collect.py       --runs label=path,... read back, checked finished, grouped
  facts.py         data and model facts (split sizes, classes, parameters)
  tables.py        tables/*.tex: results with 95% intervals, data, cost
  figures.py       figures/*.pdf: learning curves, confusion, examples
  best_run.py      the best run's confusion, examples, Grad-CAM maps, masks
  sections.py      generated/*.tex: the text filled from the runs
  bibliography.py  references.bib: standard citations of what the runs used
  latex.py         escaping, the built-in ICML-geometry style, sealed files
  compile.py       pdflatex + BibTeX, page count, what to drop over 4 pages
  assemble.py      write_paper: the paper folder (--mode=paper)
  proposal.py      write_proposal: the 1-1.5 page proposal (--mode=proposal)

Reads run folders (collect, restored_run); never imports the training loop,
sweeps or transfer.
"""
