"""Every xltransfer seqio registration: `import xltransfer.tasks` registers them all.

Task and mixture names start with `xlt_`; docs/tasks.md lists them with their data locations.
The order matters: mixtures refer to the tasks registered before them.
"""
from xltransfer import registered_names
from xltransfer.tasks import catalog
from xltransfer.tasks import corpora
from xltransfer.tasks import intermediate
from xltransfer.tasks import mixtures
from xltransfer.tasks import targets
from xltransfer.tasks import translated

targets.register()
intermediate.register()
translated.register()
corpora.register()
mixtures.register()
# For the next command's config check, which then needs no TensorFlow (registered_names.py).
if registered_names.remembered() is None:
  registered_names.remember(catalog.ENTRIES)
