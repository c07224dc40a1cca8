"""The package layout (issue 18): no two modules import each other, directly
or round a loop, even inside functions; the lower packages import nothing
above them; and the README's layout section names every module there is."""

import ast
import os
import re

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "cnn_jax")


def _modules():
  """{dotted module name: path} of every .py file under cnn_jax/."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def _imports(path, modules):
  """The cnn_jax modules `path` imports anywhere (functions included)."""
  imported = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
        "cnn_jax"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        imported.add(full if full in modules else node.module)
    elif isinstance(node, ast.Import):
      imported.update(a.name for a in node.names
                      if a.name.startswith("cnn_jax"))
  return imported


def _graph():
  modules = _modules()
  return {name: {m for m in _imports(path, modules) if m != name}
          for name, path in modules.items()}


def _is_package(name):
  return os.path.isdir(os.path.join(REPO, *name.split(".")))


def test_no_import_cycles():
  # A package's __init__ re-exporting its modules is not a loop: only
  # module -> module edges count.
  graph = {name: {m for m in targets if not _is_package(m)}
           for name, targets in _graph().items() if not _is_package(name)}
  state, cycles = {}, []

  def visit(node, trail):
    state[node] = "open"
    for target in sorted(graph.get(node, ())):
      if state.get(target) == "open":
        cycles.append(trail[trail.index(target):] + [target])
      elif target not in state:
        visit(target, trail + [target])
    state[node] = "done"

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c)
                                                   for c in cycles)


# What the lower layers may import from cnn_jax (the data flow:
# data -> models (on conv) -> tasks -> training -> runs, with sweeps,
# transfer and reports on top; distributed, the meshes and processes,
# below training and sweeps).
_ALLOWED = {
    "conv": set(),
    "ops": {"conv"},
    "data": set(),
    "models": {"conv", "ops"},
    "tasks": set(),
    "runs": set(),
    "distributed": set(),
}


def _package_of(name):
  parts = name.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_lower_packages_import_nothing_above_them():
  offending = []
  for name, targets in _graph().items():
    package = _package_of(name)
    if package not in _ALLOWED:
      continue
    for target in targets:
      other = _package_of(target)
      if other and other != package and other not in _ALLOWED[package]:
        offending.append(f"{name} imports {target}")
  assert not offending, offending


def test_reports_read_run_folders_not_the_loop():
  """Reports restore runs through training.steps; they never drive the loop
  (training.train), sweeps or transfer."""
  offending = [f"{name} imports {target}"
               for name, targets in _graph().items()
               if _package_of(name) == "reports" for target in targets
               if _package_of(target) in ("sweeps", "transfer")
               or target == "cnn_jax.training.train"]
  assert not offending, offending


def _readme_layout_paths():
  """The file paths the README's layout tree names: one name per line,
  indented two spaces per folder level, folders ending in '/'."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  section = readme[readme.index("## Project layout"):]
  start = section.index("```") + 3
  tree = section[start:section.index("```", start)]
  paths, folders = set(), []
  for line in tree.splitlines():
    match = re.match(r"^( *)(\S+)", line)
    if not match or not match.group(2).endswith(("/", ".py")):
      continue  # a description's continuation line
    depth, name = len(match.group(1)) // 2, match.group(2)
    folders = folders[:depth]
    if name.endswith("/"):
      folders.append(name.rstrip("/"))
    else:
      paths.add("/".join(folders + [name]))
  return {p for p in paths if p.startswith("cnn_jax/")}


def test_readme_layout_names_every_module():
  listed = _readme_layout_paths()
  actual = {os.path.relpath(path, REPO).replace(os.sep, "/")
            for path in _modules().values()}
  assert not actual - listed, f"not in the README: {sorted(actual - listed)}"
  assert not listed - actual, f"no such module: {sorted(listed - actual)}"
