"""LaTeX text of the paper: escaping, the built-in ICML-geometry style, the
shared macros, paper.tex's skeleton, and sealed files that a person may
edit.

The document uses the official ICML style when its file lies next to
paper.tex (icml2026.sty, icml2025.sty, ...: from the ICML website's author
kit): paper.tex asks `\\IfFileExists` for each name in `ICML_STYLES` (and
any icml*.sty found in the folder when it was written), else loads
`cnnjax_icml.sty`, written beside it: the same page geometry (US letter,
text 6.75 x 9 in, two columns of 3.25 in with a 0.25 in gap, 10 pt Times)
and the same title macros (\\icmltitle, \\icmlauthor, ...), so the page
count of the built-in layout is a faithful estimate of the official one.

Files a person edits (paper.tex, references.bib, proposal.tex) end with a
comment line holding a hash of the text above it (`write_sealed`). One
whose text still matches was written here and not edited since, so it is
regenerated; an edited one is kept (`is_untouched`). Generated parts that
follow the runs (generated/*.tex, tables/*.tex, figures/*.pdf) are
rewritten on every run; paper.tex only \\inputs them.
"""

import glob
import hashlib
import os
import re

ICML_STYLES = ("icml2026", "icml2025", "icml2024")
BUILTIN_STYLE = "cnnjax_icml"
_MARKER = "% cnn_jax.paper sha256="

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$",
            "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
            "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape(text):
  """`text` with LaTeX's special characters escaped."""
  return "".join(_ESCAPES.get(c, c) for c in str(text))


def todo(text):
  r"""A placeholder for what only a person can write: \todo{text}."""
  return f"\\todo{{{text}}}"


# --------------------------------------------------------------------------
# The built-in style and the shared macros.

STYLE = r"""% cnnjax_icml.sty: ICML's page layout and title macros, written by
% cnn_jax (launch.py --mode=paper) for when the official icml20XX.sty is not
% beside paper.tex. The lengths are icml2025.sty's: US letter, text 6.75in x
% 9in at 0.77in from the left, two columns of 3.25in with a 0.25in gap, 10pt
% Times on 12pt, 6pt between paragraphs, its title block, abstract, section
% headings, lists, captions and first-page notice; without its line-number
% ruler and its checks.
\NeedsTeXFormat{LaTeX2e}
\ProvidesPackage{cnnjax_icml}[2025/01/01 ICML layout (cnn_jax)]
\RequirePackage[letterpaper,textwidth=6.75in,textheight=9in,top=67.312pt,
  left=0.77in,columnsep=0.25in,headheight=10pt,headsep=10pt,
  footskip=25pt]{geometry}
\RequirePackage{times}
\RequirePackage{fancyhdr}
\RequirePackage{xcolor}
\RequirePackage[round]{natbib}
\setcitestyle{authoryear,round,citesep={;},aysep={,},yysep={;}}
\renewcommand{\cite}[1]{\citep{#1}}
\ifdefined\hypersetup
  \definecolor{mydarkblue}{rgb}{0,0.08,0.45}
  \hypersetup{pdfborder=0 0 0, colorlinks=true, linkcolor=mydarkblue,
    citecolor=mydarkblue, filecolor=mydarkblue, urlcolor=mydarkblue}
\fi
\pagestyle{fancy}
\fancyhf{}
\renewcommand{\headrulewidth}{1pt}
\fancyhead[C]{\small\bf\cnnjax@running}
\fancyfoot[C]{\thepage}
\def\cnnjax@running{}
\newcommand{\icmltitlerunning}[1]{\def\cnnjax@running{#1}}
\flushbottom\twocolumn\sloppy
\renewcommand\small{\@setfontsize\small\@ixpt{10}}
\renewcommand\footnotesize{\@setfontsize\footnotesize\@ixpt{10}}
\parindent 0pt
\parskip 6pt
\topsep 4pt plus 1pt minus 2pt
\partopsep 1pt plus 0.5pt minus 0.5pt
\itemsep 2pt plus 1pt minus 0.5pt
\parsep 2pt plus 1pt minus 0.5pt
\leftmargin 2em \leftmargini\leftmargin \leftmarginii 2em
\labelsep 5pt
\def\@listi{\leftmargin\leftmargini}
\footnotesep 6.65pt
\skip\footins 9pt
\def\footnoterule{\kern-3pt \hrule width 0.8in \kern 2.6pt}
\renewcommand\section{\@startsection{section}{1}{\z@}{-0.12in}{0.02in}%
  {\large\bf\raggedright}}
\renewcommand\subsection{\@startsection{subsection}{2}{\z@}{-0.10in}%
  {0.01in}{\normalsize\bf\raggedright}}
\renewcommand\subsubsection{\@startsection{subsubsection}{3}{\z@}%
  {-0.08in}{0.01in}{\normalsize\sc\raggedright}}
\def\@seccntformat#1{\csname the#1\endcsname.\hskip 0.4em}
\long\def\@makecaption#1#2{\vskip 10pt\baselineskip 11pt
  \setbox\@tempboxa\hbox{#1. #2}%
  \ifdim\wd\@tempboxa>\hsize {\small\sl #1.~}{\footnotesize #2}\par
  \else\centerline{{\small\sl #1.} {\small #2}}\fi}
\newcommand{\icmltitle}[1]{\thispagestyle{plain}{\center\baselineskip 18pt
  \hrule height 1pt\vskip .25in{\Large\bf #1}\vskip .22in
  \hrule height 1pt\vskip .3in}}
\newif\ifcnnjax@firstauthor \cnnjax@firstauthortrue
\newenvironment{icmlauthorlist}{\setlength\topsep{0pt}\setlength\parskip{0pt}%
  \begin{center}}{\end{center}}
% Under review, ICML prints 'Anonymous Authors' once, whatever the list.
\newcommand{\icmlauthor}[2]{\ifcnnjax@firstauthor
  \mbox{\bf Anonymous Authors}\textsuperscript{1\,}\fi
  \global\cnnjax@firstauthorfalse}
\newcommand{\icmlaffiliation}[2]{}
\newcommand{\icmlcorrespondingauthor}[2]{}
\newcommand{\icmlsetsymbol}[2]{}
\newcommand{\icmlkeywords}[1]{}
\newcommand{\icmlEqualContribution}{\textsuperscript{*}Equal contribution }
\newcommand{\printAffiliationsAndNotice}[1]{{\let\thefootnote\relax
  \footnotetext{\hspace*{-\footnotesep}\textsuperscript{1}Anonymous
  Institution, Anonymous City, Anonymous Region, Anonymous Country.
  Correspondence to: Anonymous Author \textless{}anon.email@domain.com%
  \textgreater{}.\par\ \\ Preliminary work. Under review by the
  International Conference on Machine Learning (ICML). Do not
  distribute.}}}
\renewenvironment{abstract}{\centerline{\large\bf Abstract}%
  \vspace{-0.12in}\begin{quote}}{\par\end{quote}\vskip 0.12in}
\endinput
"""

MACROS = r"""% Macros of the generated parts (rewritten by every launch.py --mode=paper).
\providecommand{\todo}[1]{{\color{red}\textbf{[TODO:} #1\textbf{]}}}
% A table no wider than its column (scaled down when wider).
\providecommand{\cnnjaxfit}[1]{\sbox0{#1}\ifdim\wd0>\linewidth
  \resizebox{\linewidth}{!}{\usebox0}\else\usebox0\fi}
% The end of the body: its page (at shipout), column and the height used on
% that column go to the .aux file, where cnn_jax reads the body's length.
\makeatletter
\providecommand{\cnnjaxbodyend}[3]{}
\providecommand{\cnnjaxendofbody}{\par
  \edef\cnnjax@column{\if@twocolumn\if@firstcolumn 1\else 2\fi\else 1\fi}%
  \edef\cnnjax@used{\the\pagetotal}%
  \write\@auxout{\string\cnnjaxbodyend{\thepage}{\cnnjax@column}%
    {\cnnjax@used}}}
\makeatother
"""


def style_choice(folder):
  r"""The \usepackage line: the official ICML style when its file is beside
  paper.tex at compile time, else the built-in one."""
  found = sorted((os.path.basename(p)[:-4] for p in
                  glob.glob(os.path.join(folder, "icml*.sty"))), reverse=True)
  names = list(dict.fromkeys(found + list(ICML_STYLES)))
  line = f"\\usepackage{{{BUILTIN_STYLE}}}"
  for name in reversed(names):
    line = f"\\IfFileExists{{{name}.sty}}{{\\usepackage{{{name}}}}}{{{line}}}"
  bst = "\\bibliographystyle{plainnat}"
  for name in reversed(names):
    bst = (f"\\IfFileExists{{{name}.bst}}{{\\bibliographystyle{{{name}}}}}"
           f"{{{bst}}}")
  return line, bst


def preamble(folder, title, running_title=None):
  """The preamble of paper.tex / proposal.tex up to \\begin{document}."""
  use_style, _ = style_choice(folder)
  return "\n".join([
      r"\documentclass{article}",
      r"\usepackage{microtype}",
      r"\usepackage{graphicx}",
      r"\usepackage{booktabs}",
      r"\usepackage{xcolor}",
      r"\usepackage{hyperref}",
      r"\newcommand{\theHalgorithm}{\arabic{algorithm}}",
      "% The official ICML style when icml20XX.sty lies beside this file "
      "(ICML author kit),",
      "% else cnnjax_icml.sty (the same geometry).",
      use_style,
      r"\input{generated/macros}",
      f"\\icmltitlerunning{{{running_title or title}}}",
      ""])


def title_block(title, keywords):
  return "\n".join([
      r"\twocolumn[",
      f"\\icmltitle{{{title}}}",
      r"\icmlsetsymbol{equal}{*}",
      r"\begin{icmlauthorlist}",
      r"\icmlauthor{Firstname Lastname}{inst}",
      r"\end{icmlauthorlist}",
      r"\icmlaffiliation{inst}{Department, University, City, Country}",
      r"\icmlcorrespondingauthor{Firstname Lastname}{name@example.edu}",
      f"\\icmlkeywords{{{keywords}}}",
      r"\vskip 0.3in",
      r"]",
      r"\printAffiliationsAndNotice{}",
      ""])


def ending(folder):
  """The end of the body (a label compile.py finds the page of), the
  references and \\end{document}."""
  _, bst = style_choice(folder)
  return "\n".join([
      "% Keep this at the end of the body: the body's length is read from "
      "it.",
      r"\cnnjaxendofbody",
      r"\bibliography{references}",
      bst,
      r"\end{document}", ""])


def figure(path, caption, label, wide=False):
  """A figure environment including the PDF `path`."""
  env = "figure*" if wide else "figure"
  width = r"\textwidth" if wide else r"\columnwidth"
  return "\n".join([f"\\begin{{{env}}}[t]", r"\centering",
                    f"\\includegraphics[width={width}]{{{path}}}",
                    f"\\caption{{{caption}}}", f"\\label{{{label}}}",
                    f"\\end{{{env}}}", ""])


def table(path, caption, label, wide=False):
  """A table environment \\input-ing the tabular in `path`."""
  env = "table*" if wide else "table"
  return "\n".join([f"\\begin{{{env}}}[t]", f"\\caption{{{caption}}}",
                    f"\\label{{{label}}}", r"\centering\small",
                    f"\\input{{{path}}}", f"\\end{{{env}}}", ""])


def tabular(columns, header, rows):
  """A booktabs tabular, fitted to the column width (\\cnnjaxfit); cells
  are inserted as given (escape them first)."""
  lines = [f"\\cnnjaxfit{{\\begin{{tabular}}{{{columns}}}", r"\toprule",
           " & ".join(header) + r" \\", r"\midrule"]
  lines += [" & ".join(str(c) for c in row) + r" \\" for row in rows]
  lines += [r"\bottomrule", r"\end{tabular}}", ""]
  return "\n".join(lines)


def read_tabular(path):
  """The body rows of a tabular written by `tabular`: [[cell text]] (for
  tests and checks: the numbers as the reader sees them)."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  body = text.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
  rows = []
  for line in body.strip().splitlines():
    line = line.strip()
    if line.endswith(r"\\"):
      rows.append([c.strip() for c in re.split(r"(?<!\\)&", line[:-2])])
  return rows


# --------------------------------------------------------------------------
# Sealed files.


def _digest(text):
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_sealed(path, text):
  """Writes `text` and a last comment line holding its hash."""
  if not text.endswith("\n"):
    text += "\n"
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"{text}{_MARKER}{_digest(text)}\n")


def is_untouched(path):
  """Whether `path` was written by write_sealed and not edited since."""
  with open(path, encoding="utf-8") as f:
    content = f.read()
  head, marker, tail = content.rpartition(_MARKER)
  return bool(marker) and tail.strip() == _digest(head)


def write_unless_edited(path, text, overwrite=False):
  """Writes the sealed `text` to `path` unless the file there was edited
  (or not written here) and not `overwrite`. Returns True when written;
  when kept, the fresh text goes to `<path>.new` for comparison."""
  if os.path.exists(path) and not overwrite and not is_untouched(path):
    write_sealed(path + ".new", text)
    return False
  write_sealed(path, text)
  stale = path + ".new"
  if os.path.exists(stale) and is_untouched(stale):
    os.remove(stale)
  return True


def write_generated(folder, relative, text):
  """Writes a generated file (always replaced) under `folder`."""
  path = os.path.join(folder, relative)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path
