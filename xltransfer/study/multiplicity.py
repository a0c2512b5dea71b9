"""Adjusted p-values for a family of tests: Holm (family-wise error) or Benjamini-Hochberg (FDR).

Holm's step-down procedure controls the probability of any false rejection in the family under
any dependence between the tests (the study's contrasts share conditions and test sets);
Benjamini-Hochberg controls the expected share of false rejections among the rejections, under
the positive dependence that shared conditions produce. A test is significant after adjustment
when its adjusted p-value is below the family's level.
"""
import numpy as np
from scipy import stats

METHODS = {
    "holm": "Holm's step-down procedure (family-wise error rate)",
    "bh": "Benjamini-Hochberg (false discovery rate)",
}


def adjust(p_values, method: str) -> np.ndarray:
  """Adjusted p-values, in the order given."""
  p = np.asarray(p_values, dtype=np.float64)
  if p.size == 0:
    return p
  if method == "bh":
    return stats.false_discovery_control(p, method="bh")
  if method != "holm":
    raise ValueError(f"unknown multiple-comparison method {method!r}; use one of {list(METHODS)}")
  order = np.argsort(p, kind="stable")
  # The i-th smallest p-value is compared with level / (m - i): scale, then keep it monotone.
  scaled = p[order] * (p.size - np.arange(p.size))
  adjusted = np.empty_like(p)
  adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
  return adjusted
