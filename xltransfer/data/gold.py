"""Where an eval task's examples come from, and whether they carry gold labels at all.

XTREME-R is a leaderboard: its official download hides the test gold (labels and tags
dropped, QA answers emptied, XCOPA labels all 0, Mewsli-X entity ids empty, Tatoeba's English
side sorted). Those files make the submission; a local score needs a labelled source (an
original release, TFDS, or a dev split). Every eval source therefore says what it read:

    provenance = task_provenance(seqio_task, split)   # after the split has been loaded
    provenance.labelled        # False: predictions only, never a metric
    provenance.no_gold         # why not, naming the file ("... every label is 0 ...")
    provenance.describe()      # "XNLI 1.0 release, test split (/data/XNLI-1.0/xnli.test.tsv)"

Sources that know their provenance (the XTREME-R targets' file and TFDS sources, and
`RetrievalSet.provenance` for the retrieval targets) expose it; a user's own seqio task
without it gets None, and the evaluator then falls back to looking at the examples' targets.
"""
import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Provenance:
  """What one eval split was read from.

  source: the dataset release, e.g. "XTREME-R download", "XNLI 1.0 release", "tfds xnli".
  location: the file(s) or TFDS name read.
  split: that source's own split name ("test", "dev", "validation").
  no_gold: None when the examples carry gold; otherwise why they do not, naming the file.
  """
  source: str
  location: str
  split: str
  no_gold: Optional[str] = None

  @property
  def labelled(self) -> bool:
    return self.no_gold is None

  def describe(self) -> str:
    return f"{self.source}, {self.split} split ({self.location})"

  def to_json(self) -> dict:
    return {"source": self.source, "location": self.location, "split": self.split,
            "labelled": self.labelled, "no_gold": self.no_gold}

  @classmethod
  def from_json(cls, data: dict) -> "Provenance":
    return cls(data["source"], data["location"], data["split"], data.get("no_gold"))


def task_provenance(task, split: str) -> Optional[Provenance]:
  """The provenance of `task`'s `split` as its data source reports it, or None when the
  source does not say (a user's own task). Loads the split if the source needs to."""
  provenance = getattr(task.source, "provenance", None)
  return provenance(split) if callable(provenance) else None
