"""paper.tex -> paper.pdf with pdflatex and BibTeX, the page count, and what
to drop when the body is over the page limit.

`compile_tex(folder, 'paper')` runs pdflatex, bibtex (when the document
cites), pdflatex twice, in `folder`; it needs `pdflatex` (and `bibtex`) on
the PATH (Debian: apt-get install texlive-latex-base
texlive-latex-recommended texlive-fonts-recommended). Without them it
returns a result saying so and the .tex files stay as they are.

The body ends at \\cnnjaxendofbody (generated/macros.tex), which writes its
page, column and the height used on that column to the .aux file; from it
`overflow_inches` says how many column-inches the body runs past the limit
(ICML: 4 pages of body, references unlimited), and `advice` which figures
and tables (lowest priority first) would free that much. Float heights are
estimated from their generated sizes (figures are drawn at their printed
size, table rows are counted), so the advice is an estimate, and shorter
text is always the other way.
"""

import dataclasses
import os
import re
import shutil
import subprocess
from typing import Dict, List, Optional

COLUMN_HEIGHT_IN = 9.0
COLUMNS = 2
PAGE_LIMIT = 4
_TIMEOUT = 180


@dataclasses.dataclass
class CompileResult:
  pdf: Optional[str]            # None when no PDF was made
  pages: Optional[int]          # pages of the PDF
  body_end: Optional[tuple]     # (page, column, inches used on the column)
  message: str                  # why there is no PDF, or ''
  log_tail: str = ""
  float_pages: Dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def body_pages(self):
    """The last page holding body text or one of its floats (LaTeX may
    place a float after the text's end)."""
    if not self.body_end:
      return self.pages
    return max([self.body_end[0]] + list(self.float_pages.values()))


@dataclasses.dataclass
class Float:
  """A figure or table the body holds, with its estimated height."""
  name: str           # what to tell the user: figures/x.pdf, tables/y.tex
  label: str
  height_in: float    # of the float with its caption, in one column
  priority: int       # lower: suggested for dropping first
  wide: bool = False  # spans both columns


def tools_missing():
  """'' when pdflatex and bibtex are on the PATH, else what is missing."""
  missing = [t for t in ("pdflatex", "bibtex") if shutil.which(t) is None]
  if not missing:
    return ""
  return (f"{' and '.join(missing)} not installed, so no PDF (Debian/Ubuntu: "
          "apt-get install texlive-latex-base texlive-latex-recommended "
          "texlive-fonts-recommended)")


def _run(command, folder):
  return subprocess.run(command, cwd=folder, capture_output=True, text=True,
                        timeout=_TIMEOUT, check=False, errors="replace")


def compile_tex(folder, name="paper"):
  """Compiles `<folder>/<name>.tex` to `<name>.pdf`; returns CompileResult.

  A LaTeX error gives pdf=None and a message naming the .log file and its
  first error line.
  """
  missing = tools_missing()
  if missing:
    return CompileResult(None, None, None, missing)
  latex = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
           f"{name}.tex"]
  result = _run(latex, folder)
  aux = os.path.join(folder, f"{name}.aux")
  if result.returncode == 0 and os.path.exists(aux):
    with open(aux, encoding="utf-8", errors="replace") as f:
      cites = "\\bibdata" in f.read()
    if cites:
      _run(["bibtex", name], folder)
    for _ in range(2):
      result = _run(latex, folder)
      if result.returncode:
        break
  log_path = os.path.join(folder, f"{name}.log")
  log = ""
  if os.path.exists(log_path):
    with open(log_path, encoding="utf-8", errors="replace") as f:
      log = f.read()
  if result.returncode:
    error = next((line for line in log.splitlines() if line.startswith("!")),
                 result.stdout.strip().splitlines()[-1:] or ["?"])
    return CompileResult(None, None, None,
                         f"pdflatex failed on {name}.tex: {error} (see "
                         f"{log_path})", log[-3000:])
  match = re.search(r"Output written on .*?\((\d+) pages?", log)
  return CompileResult(os.path.join(folder, f"{name}.pdf"),
                       int(match.group(1)) if match else None,
                       body_end(aux), "", log[-3000:], float_pages(aux))


def body_end(aux_path):
  """(page, column, inches used on that column) from the aux file's
  \\cnnjaxbodyend line, or None."""
  if not os.path.exists(aux_path):
    return None
  with open(aux_path, encoding="utf-8", errors="replace") as f:
    found = re.findall(r"\\cnnjaxbodyend\{(\d+)\}\{(\d)\}\{([\d.]+)pt\}",
                       f.read())
  if not found:
    return None
  page, column, points = found[-1]
  return int(page), int(column), float(points) / 72.27


def float_pages(aux_path):
  """{label: page} of the figures and tables (labels fig:*, tab:*)."""
  with open(aux_path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  return {label: int(page) for label, page in re.findall(
      r"\\newlabel\{((?:fig|tab):[^}]*)\}\{\{[^}]*\}\{(\d+)\}", text)}


def overflow_inches(end, limit=PAGE_LIMIT):
  """Column-inches of body past `limit` pages (<= 0: within)."""
  page, column, used = end
  total = ((page - 1) * COLUMNS + (column - 1)) * COLUMN_HEIGHT_IN + used
  return total - limit * COLUMNS * COLUMN_HEIGHT_IN


def advice(result, floats: List[Float], limit=PAGE_LIMIT):
  """Lines for the user: the page count and, when the body is over
  `limit` pages, which floats to drop (lowest priority first) to fit."""
  if result.pdf is None:
    return [result.message]
  lines = [f"{result.pdf}: {result.pages} pages"]
  if result.body_end is None:
    lines.append("(the body's end marker \\cnnjaxendofbody is missing from "
                 "paper.tex, so the body's length is unknown)")
    return lines
  page, column, used = result.body_end
  over = overflow_inches(result.body_end, limit)
  # Floats LaTeX pushed past the limit count with their estimated height.
  heights = {f.label: f.height_in * (COLUMNS if f.wide else 1)
             for f in floats}
  late = [label for label, p in result.float_pages.items() if p > limit]
  if late:
    over = max(over, sum(heights.get(label, 0.0) for label in late))
  where = (f"the body text ends on page {page}, column {column} "
           f"({used:.1f} of {COLUMN_HEIGHT_IN:g} in)")
  if result.body_pages > page:
    where += f", its floats reach page {result.body_pages}"
  if over <= 0:
    spare = (f"{-over:.1f} column-inches to spare"
             if result.body_pages <= page else
             f"the body and its floats end on page {result.body_pages}")
    lines.append(f"{where}: within the {limit}-page limit ({spare})")
    return lines
  costs = [(item, item.height_in * (COLUMNS if item.wide else 1))
           for item in sorted(floats, key=lambda f: f.priority)]
  total = sum(cost for _, cost in costs)
  if total < over:
    # Dropping floats cannot do it: the text itself is too long.
    lines.append(f"{where}: {over:.1f} column-inches over the {limit}-page "
                 f"limit, more than all figures and tables hold (~"
                 f"{total:.1f}): shorten the text by ~{over - total:.0f} "
                 f"column-inches (~{(over - total) * 6:.0f} lines), then "
                 "drop figures and tables, lowest priority first: "
                 + ", ".join(item.name for item, _ in costs))
    return lines
  lines.append(f"{where}: {over:.1f} column-inches over the {limit}-page "
               "limit. To fit, drop (estimated heights, lowest priority "
               "first):")
  freed = 0.0
  for item, cost in costs:
    freed += cost
    lines.append(f"  - {item.name} (\\ref{{{item.label}}}, ~{cost:.1f} "
                 "column-inches)")
    if freed >= over:
      break
  return lines


def pdf_text(pdf):
  """The PDF's text (pdftotext -layout), or None without poppler-utils."""
  if shutil.which("pdftotext") is None:
    return None
  result = subprocess.run(["pdftotext", "-layout", pdf, "-"],
                          capture_output=True, text=True, timeout=60,
                          check=False, errors="replace")
  return result.stdout if result.returncode == 0 else None


def first_page_png(pdf, png, dpi=100):
  """Renders the PDF's first page to `png` (pdftoppm); returns the path."""
  if shutil.which("pdftoppm") is None:
    raise FileNotFoundError("pdftoppm not installed (apt-get install "
                            "poppler-utils)")
  stem = png[:-4] if png.endswith(".png") else png
  subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-f", "1", "-l", "1",
                  "-singlefile", pdf, stem], check=True, timeout=60)
  return stem + ".png"
