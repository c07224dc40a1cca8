"""The paper's tables (booktabs tabulars in tables/*.tex), from the groups of
runs (collect.py) and what is measured about them (facts.py):

  results.tex  label, model, test accuracy (%) with its 95% interval, test
               loss, the task's headline metric when it is not accuracy,
               number of seeds
  data.tex     each group's dataset: source, examples per split, input shape,
               classes
  cost.tex     parameters, epochs, steps, wall time, training img/s, device

Numbers are summary.json's, formatted by `percent` / `number` (the tests
parse them back): accuracy in % with 2 decimals, losses with 4.
"""

from cnn_jax.reports.paper import collect
from cnn_jax.reports.paper import latex


def percent(value):
  """0.98765 -> '98.77' (a fraction as a percentage, 2 decimals)."""
  return "--" if value is None else f"{100 * value:.2f}"


def number(value, digits=4):
  return "--" if value is None else f"{value:.{digits}f}"


def count(value):
  return "--" if value is None else f"{int(value):,}"


def interval_text(low, high, as_percent=True):
  if low is None:
    return "--"
  if as_percent:
    return f"[{percent(low)}, {percent(high)}]"
  return f"[{number(low)}, {number(high)}]"


def _mean(values):
  return sum(values) / len(values) if values else None


def results_rows(groups, facts):
  """[[cell]] of the results table, one row per group."""
  headline = {f.headline for f in facts.values()} - {"accuracy"}
  rows = []
  for group in groups:
    mean, low, high, _ = collect.headline_interval(group, "test_accuracy")
    loss = _mean(group.values("test_loss"))
    row = [latex.escape(group.label),
           latex.escape(group.config.get("model", {}).get("name", "?")),
           percent(mean), interval_text(low, high), number(loss)]
    for key in sorted(headline):
      value, low, high, _ = collect.headline_interval(group, key)
      row.append(number(value) + (" " + interval_text(low, high, False)
                                  if low is not None else ""))
    row.append(str(len(group.runs)))
    rows.append(row)
  return rows, sorted(headline)


def results_table(groups, facts):
  rows, extra = results_rows(groups, facts)
  header = ["Run", "Model", r"Acc.\ (\%)", r"95\% CI", "Loss"]
  header += [latex.escape(k.replace("_", " ")) for k in extra] + ["$n$"]
  return latex.tabular("ll" + "r" * (len(header) - 2), header, rows)


def results_caption(groups):
  seeded = any(len(g.runs) > 1 for g in groups)
  single = any(len(g.runs) == 1 for g in groups)
  how = []
  if seeded:
    how.append("mean over $n$ seeds with a Student-$t$ 95\\% interval")
  if single:
    how.append("for a single run ($n=1$) the Wilson 95\\% interval of the "
               "accuracy over its test examples")
  return ("Test results of each run. Accuracy: " + "; ".join(how) +
          ". Loss: mean test cross-entropy.")


def data_rows(groups, facts):
  rows = []
  for group in groups:
    fact = facts[group.label]
    rows.append([latex.escape(group.label), latex.escape(fact.data_name),
                 count(fact.split_sizes.get("train")),
                 count(fact.split_sizes.get("val")),
                 count(fact.split_sizes.get("test")),
                 latex.escape("x".join(str(d) for d in fact.example_shape)),
                 count(fact.num_classes)])
  return rows


def data_table(groups, facts):
  return latex.tabular(
      "llrrrrr", ["Run", "Data", "Train", "Val", "Test", "Input", "Classes"],
      data_rows(groups, facts))


def cost_rows(groups, facts):
  rows = []
  for group in groups:
    fact = facts[group.label]
    summaries = [r.summary for r in group.runs]
    wall = _mean([s["wall_seconds"] for s in summaries
                  if s.get("wall_seconds") is not None])
    img_s = _mean([s["train_img_per_s"] for s in summaries
                   if s.get("train_img_per_s")])
    devices = sorted({str(s.get("device", "?")) for s in summaries})
    rows.append([latex.escape(group.label), count(fact.parameters),
                 str(summaries[0].get("epochs", "--")),
                 count(summaries[0].get("steps")),
                 number(wall, 1), count(round(img_s)) if img_s else "--",
                 latex.escape(", ".join(devices))])
  return rows


def cost_table(groups, facts):
  return latex.tabular(
      "lrrrrrl", ["Run", "Params", "Epochs", "Steps", "Wall (s)", "img/s",
                  "Device"], cost_rows(groups, facts))
