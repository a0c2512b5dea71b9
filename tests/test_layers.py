"""The package's layers (docs/architecture.md): no import runs from a lower layer to a higher one.

Every `import` of every module is read, including the ones inside functions (a lazy import is
still a dependency). Within a layer, only the edges listed in SAME_LAYER_EDGES are allowed:
train and evaluation are siblings and neither imports the other.
"""
import ast
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "xltransfer")
# Package directories outside xltransfer/ (setup.py's package_dir): the top-level tasks/.
MAPPED_PACKAGES = {"xltransfer.tasks": os.path.join(REPO, "tasks")}

# Bottom to top. A unit is a subpackage or a top-level module of xltransfer.
LAYERS = (
    ("errors", {"errors"}),
    ("foundation", {"gin_utils", "command_line", "run_lock", "disk_full", "host_memory",
                    "scalar_summaries", "registered_names", "library_logs"}),
    ("core", {"model", "partitioning", "data", "checkpoints", "metrics"}),
    ("tasks", {"tasks"}),
    ("runs", {"train", "evaluation"}),
    ("tools", {"planning", "study", "launch"}),
    ("cli", {"commands", "cli", "__main__"}),
)
# Imports allowed between units of one layer.
SAME_LAYER_EDGES = {
    ("checkpoints", "model"),  # a checkpoint format maps onto the model's parameter tree
    ("launch", "planning"),    # the TPU launcher reads planning's accelerator-type table
    ("__main__", "cli"),       # `python -m xltransfer` is the `xltransfer` command
}
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def _modules():
  roots = [("xltransfer", PACKAGE)] + list(MAPPED_PACKAGES.items())
  for package, root in roots:
    for directory, _, files in os.walk(root):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(directory, name)
          relative = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
          yield path, f"{package}.{relative}".removesuffix(".__init__")


def _imports(path: str):
  """(line, imported module) for every xltransfer import in the file, lazy ones included."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = ([f"xltransfer.{alias.name}" for alias in node.names]
               if node.module == "xltransfer" else [node.module])
    else:
      continue
    for name in names:
      if name.startswith("xltransfer."):
        yield node.lineno, name


def layer_violations():
  problems = []
  for path, module in _modules():
    source = _unit(module)
    if source == "__init__":
      continue
    assert source in RANK, f"{module}: unit {source!r} has no layer in test_layers.LAYERS"
    for line, imported in _imports(path):
      target = _unit(imported)
      if target == source:
        continue
      assert target in RANK, f"{path}:{line}: imports {imported}, whose unit has no layer"
      if RANK[target] > RANK[source] or (RANK[target] == RANK[source]
                                         and (source, target) not in SAME_LAYER_EDGES):
        problems.append(f"{os.path.relpath(path, os.path.dirname(PACKAGE))}:{line}: "
                        f"{source} ({LAYERS[RANK[source]][0]}) imports {imported} "
                        f"({LAYERS[RANK[target]][0]})")
  return problems


def test_no_import_runs_upward_or_between_siblings():
  assert layer_violations() == []


def test_every_unit_of_the_package_has_a_layer():
  units = {_unit(module) for _, module in _modules()} - {"__init__"}
  assert units == set(RANK), "units without a layer, or layers naming nothing"


@pytest.mark.parametrize("source, target", [("evaluation", "train"), ("train", "evaluation"),
                                            ("tasks", "evaluation"), ("checkpoints", "train")])
def test_the_check_catches_a_back_edge(tmp_path, monkeypatch, source, target):
  """A planted import of `target` in `source` is reported (the check can fail)."""
  planted = os.path.join(MAPPED_PACKAGES.get(f"xltransfer.{source}",
                                             os.path.join(PACKAGE, source)), "__init__.py")
  original = open(planted).read()
  copy = tmp_path / "module.py"
  copy.write_text(original + f"\nimport xltransfer.{target}.anything\n")
  real_modules = list(_modules())
  monkeypatch.setattr(sys.modules[__name__], "_modules", lambda: [
      (str(copy) if path == planted else path, module) for path, module in real_modules])
  assert any(f"imports xltransfer.{target}.anything" in p for p in layer_violations())
