"""The report's PNGs: a condition x task heatmap of deltas against the baseline, and per-language
bars of the deltas on the low-resource languages. Reads the dict that report.build_report
returns; matplotlib runs headless (Agg).
"""
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

HEATMAP = "heatmap_deltas_vs_baseline.png"


def _file_name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _lookup(report, **keys):
  for c in report["comparisons"]:
    if all(c.get(k) == v for k, v in keys.items()):
      return c
  return None


def heatmap(report: dict, path: str) -> bool:
  """Rows: conditions other than the baseline; columns: targets and the targets mean."""
  baseline = report["baseline_condition"]
  conditions = [c for c in report["conditions"] if c != baseline]
  columns = report["columns"] + ["targets mean"]
  if not conditions:
    return False
  values = np.full((len(conditions), len(columns)), np.nan)
  marks = [["" for _ in columns] for _ in conditions]
  for i, c in enumerate(conditions):
    for j, column in enumerate(columns):
      if column == "targets mean":
        d = _lookup(report, reference=baseline, condition=c, scope="targets_mean")
      else:
        d = _lookup(report, reference=baseline, condition=c, scope="task", column=column)
      if d is not None:
        values[i, j] = d["delta"]
        marks[i][j] = f"{d['delta']:+.1f}" + ("*" if d["significant_adjusted"] else "")
  if np.all(np.isnan(values)):
    return False
  limit = max(float(np.nanmax(np.abs(values))), 0.1)
  fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 3, 0.5 * len(conditions) + 2))
  image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit,
                    aspect="auto")
  ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
  labels = [report["conditions"][c]["label"] for c in conditions]
  ax.set_yticks(range(len(conditions)), labels)
  for i in range(len(conditions)):
    for j in range(len(columns)):
      if marks[i][j]:
        dark = abs(values[i, j]) > 0.6 * limit
        ax.text(j, i, marks[i][j], ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
  fig.colorbar(image, ax=ax, label="Δ vs baseline (points)")
  ax.set_title(f"{report['study']}: Δ vs {report['conditions'][baseline]['label']} "
               "(* 95% CI excludes 0)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def lowres_bars(report: dict, column: str, path: str) -> bool:
  """Grouped bars per low-resource language of `column`: each condition's delta vs baseline."""
  baseline = report["baseline_condition"]
  conditions = [c for c in report["conditions"] if c != baseline]
  low = set(report["language_groups"]["low-resource"])
  langs = sorted({l for m in report["per_language"].get(column, {}).values() for l in m} & low)
  if not langs or not conditions:
    return False
  width = 0.8 / len(conditions)
  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(langs) * max(1, len(conditions) / 2)), 4))
  drew = False
  for k, c in enumerate(conditions):
    deltas, errors = [], [[], []]
    for lang in langs:
      d = _lookup(report, reference=baseline, condition=c, scope="language", column=column,
                  language=lang)
      delta = np.nan if d is None else d["delta"]
      deltas.append(delta)
      has_ci = d is not None and d["ci_low"] is not None
      errors[0].append(delta - d["ci_low"] if has_ci else 0.0)
      errors[1].append(d["ci_high"] - delta if has_ci else 0.0)
    if not np.all(np.isnan(deltas)):
      drew = True
    x = np.arange(len(langs)) + (k - (len(conditions) - 1) / 2) * width
    ax.bar(x, deltas, width, yerr=np.array(errors), capsize=2,
           label=report["conditions"][c]["label"])
  if not drew:
    plt.close(fig)
    return False
  ax.axhline(0, color="black", linewidth=0.8)
  ax.set_xticks(range(len(langs)), langs)
  ax.set_ylabel("Δ vs baseline (points, 95% CI)")
  ax.set_title(f"{column}: low-resource languages")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def write_plots(report: dict, out_dir: str) -> list:
  """Writes every plot that has data; returns their paths."""
  written = []
  path = os.path.join(out_dir, HEATMAP)
  if heatmap(report, path):
    written.append(path)
  for column in report["columns"]:
    path = os.path.join(out_dir, f"lowres_{_file_name(column)}.png")
    if lowres_bars(report, column, path):
      written.append(path)
  return written
