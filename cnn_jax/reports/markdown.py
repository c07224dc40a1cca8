"""Markdown for reports: tables, images, durations, the sealed report.md and
its HTML rendering.

A report.md is sealed: its last line is a marker holding a hash of the text
above it. A report.md whose text still matches its marker was written by
cnn_jax and not edited since, so it may be regenerated; any other is kept
(entry.write_report).

The run report (report.py), the sweep report (report_sweep.py) and the
lecture experiments build on these helpers; this module imports none of
them.
"""

import hashlib
import html as html_lib

# Reports written before this module existed carry the same marker; keep it
# byte for byte so they are still recognised as untouched.
_MARKER = "<!-- cnn_jax.report sha256="


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


# --------------------------------------------------------------------------
# The sealed report.md.


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
  """Whether report.md at `path` was written by cnn_jax and not edited
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
