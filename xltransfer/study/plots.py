"""The report's PNGs: condition x task heatmaps of deltas against the baseline and against
English-only, side by side, and per-language bars of the deltas on the low-resource languages.
Reads the dict that report.build_report returns; matplotlib runs headless (Agg).

A plot with nothing to show (no deltas, or every delta and interval exactly 0, e.g. a model
that predicts one class in every condition) is not drawn; `write_plots` says why instead.
Colours are centred on 0 and scaled by the largest interval end, not the largest delta, so a
small delta with a wide interval is pale rather than saturated.
"""
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

HEATMAP = "heatmap_deltas.png"
# Deltas are on a 0-100 scale: below this a delta or interval end is float noise.
_ZERO = 1e-9


def _file_name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _lookup(report, **keys):
  for c in report["comparisons"]:
    if all(c.get(k) == v for k, v in keys.items()):
      return c
  return None


def _extent(d: dict) -> float:
  ends = [d["delta"]] + [d[k] for k in ("ci_low", "ci_high") if d.get(k) is not None]
  return max(abs(v) for v in ends)


def _cell_text(d: dict) -> str:
  text = f"{d['delta']:+.1f}" + ("*" if d.get("significant_adjusted") else "")
  if d.get("ci_low") is not None:
    text += f"\n[{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"
  return text


def _panels(report: dict) -> list:
  """(reference, [conditions]) for each heatmap panel: vs the baseline, vs English-only."""
  return [(ref, conds) for ref, conds in report["references"][:2] if conds]


def heatmap(report: dict, path: str):
  """One panel per reference; rows: conditions, columns: targets and the targets mean.
  Returns None when drawn, else why not."""
  columns = report["columns"] + ["targets mean"]
  panels = []
  for reference, conditions in _panels(report):
    cells = {}
    for i, c in enumerate(conditions):
      for j, column in enumerate(columns):
        keys = ({"scope": "targets_mean"} if column == "targets mean"
                else {"scope": "task", "column": column})
        d = _lookup(report, reference=reference, condition=c, **keys)
        if d is not None:
          cells[(i, j)] = d
    if cells:
      panels.append((reference, conditions, cells))
  if not panels:
    return "no condition has a delta"
  limit = max(_extent(d) for _, _, cells in panels for d in cells.values())
  if limit <= _ZERO:
    return "every delta and interval is 0 (the conditions' predictions score the same)"
  rows = sum(len(conditions) for _, conditions, _ in panels)
  # Constrained layout keeps each panel's condition labels clear of the panel to its left.
  fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                           figsize=(len(panels) * (1.3 * len(columns) + 2.5), 0.8 * rows + 2.5))
  image = None
  for ax, (reference, conditions, cells) in zip(axes[0], panels):
    values = np.full((len(conditions), len(columns)), np.nan)
    for (i, j), d in cells.items():
      values[i, j] = d["delta"]
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit,
                      aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(conditions)),
                  [report["conditions"][c]["label"] for c in conditions])
    for (i, j), d in cells.items():
      dark = abs(d["delta"]) > 0.6 * limit
      ax.text(j, i, _cell_text(d), ha="center", va="center", fontsize=7,
              color="white" if dark else "black")
    ax.set_title(f"Δ vs {report['conditions'][reference]['label']}", fontsize=10)
  fig.colorbar(image, ax=list(axes[0]), label="Δ (points)")
  method = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[report["multiple_comparisons"]["method"]]
  fig.suptitle(f"{report['study']}: deltas [95% CI]; * significant after {method} "
               "adjustment", fontsize=10)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return None


def lowres_bars(report: dict, column: str, path: str):
  """Grouped bars per low-resource language of `column`: each condition's delta vs baseline.
  Returns None when drawn, else why not."""
  baseline = report["baseline_condition"]
  conditions = [c for c in report["conditions"] if c != baseline]
  low = set(report["language_groups"]["low-resource"])
  langs = sorted({l for m in report["per_language"].get(column, {}).values() for l in m} & low)
  if not langs or not conditions:
    return "no low-resource language was evaluated"
  found = {(c, lang): _lookup(report, reference=baseline, condition=c, scope="language",
                              column=column, language=lang)
           for c in conditions for lang in langs}
  found = {k: d for k, d in found.items() if d is not None}
  if not found:
    return "no condition has a delta against the baseline"
  if max(_extent(d) for d in found.values()) <= _ZERO:
    return "every delta and interval is 0 (the conditions' predictions score the same)"
  width = 0.8 / len(conditions)
  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(langs) * max(1, len(conditions) / 2)), 4))
  for k, c in enumerate(conditions):
    deltas, errors = [], [[], []]
    for lang in langs:
      d = found.get((c, lang))
      delta = np.nan if d is None else d["delta"]
      deltas.append(delta)
      has_ci = d is not None and d["ci_low"] is not None
      errors[0].append(delta - d["ci_low"] if has_ci else 0.0)
      errors[1].append(d["ci_high"] - delta if has_ci else 0.0)
    x = np.arange(len(langs)) + (k - (len(conditions) - 1) / 2) * width
    bars = ax.bar(x, deltas, width, yerr=np.array(errors), capsize=2,
                  label=report["conditions"][c]["label"])
    # The value on each bar: a delta of 0 is a bar of no height, visible only by its label.
    ax.bar_label(bars, labels=["" if np.isnan(d) else f"{d:+.1f}" for d in deltas],
                 fontsize=7, padding=2)
  ax.axhline(0, color="black", linewidth=0.8)
  ax.set_xticks(range(len(langs)), langs)
  ax.set_ylabel("Δ vs baseline (points, 95% CI)")
  ax.set_title(f"{column}: low-resource languages")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return None


def write_plots(report: dict, out_dir: str) -> tuple:
  """Writes every plot that has something to show: (paths, {file name: why not drawn})."""
  written, omitted = [], {}
  jobs = [(HEATMAP, lambda path: heatmap(report, path))]
  jobs += [(f"lowres_{_file_name(column)}.png",
            lambda path, column=column: lowres_bars(report, column, path))
           for column in report["columns"]]
  for name, draw in jobs:
    path = os.path.join(out_dir, name)
    why_not = draw(path)
    if why_not is None:
      written.append(path)
    elif not why_not.startswith("no low-resource"):  # expected: nothing to say
      omitted[name] = why_not
    if why_not is not None and os.path.exists(path):  # from an earlier report: no longer true
      os.remove(path)
  return written, omitted
