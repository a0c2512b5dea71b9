"""The study's mixtures. Rates are example counts with a temperature (xltransfer.tasks.rates:
counts from gin `example_counts.counts`, else counted from the data, else published sizes;
`count ** (1 / T)` after clipping at gin `maximum_examples.value`).

  xlt_inter_all9                      the English intermediate tasks (list: gin ALL_NINE)
  xlt_inter_all9_plus_span_lowres     + span corruption on the low-resource languages
  xlt_span_lowres                     span corruption on the low-resource languages alone
  xlt_span_highres                    the same for the high-resource contrast set
  xlt_translated_lowres               the nine tasks translated into the low-resource languages
  xlt_translated_lowres_plus_span     translated tasks + low-resource span corruption
  xlt_inter_all9_plus_translated_lowres   English + translated intermediate tasks
  xlt_inter_all9_plus_translated_lowres_plus_span  all of the above

Each English task alone is its task (`xlt_inter_{name}`). Supervised tasks share rates by
`mixing_temperature`; the span-corruption corpora share theirs by `corpus_temperature` over
their document counts, and together get `span_fraction` of a combined mixture's total rate
(gin `span_fraction.value`).
"""
import gin
import seqio

from xltransfer.data import languages
from xltransfer.tasks import catalog, intermediate, rates

ALL_NINE = ("anli_plus", "mnli", "qqp", "sst2", "squad_v2", "ccg", "commonsenseqa", "cosmosqa",
            "hellaswag")
# Kept importable from here: the gin names (`mixing_temperature.value`, ...) are unchanged.
mixing_temperature = rates.mixing_temperature
maximum_examples = rates.maximum_examples
corpus_temperature = rates.corpus_temperature


@gin.configurable
def all_nine_tasks(names=ALL_NINE):
  """The English intermediate tasks of the all-nine mixtures (gin: `all_nine_tasks.names`)."""
  return tuple(names)


@gin.configurable
def span_fraction(value=0.1):
  """Share of the total rate given to span corruption in the combined mixtures."""
  return value


@gin.configurable
def span_source(value="mc4"):
  """Corpus behind the low-resource span-corruption tasks: mc4, wiki, text or sample."""
  return value


def example_count(task) -> float:
  """Training examples of a task (xltransfer.tasks.rates.example_count)."""
  entry = catalog.ENTRIES.get(task.name)
  return rates.example_count(task, entry.family if entry is not None else None)


def temperature_rate(task) -> float:
  return rates.rate(example_count(task), rates.mixing_temperature())


def corpus_rate(task) -> float:
  return rates.rate(example_count(task), rates.corpus_temperature())


class DeferredMixture(seqio.Mixture):
  """A mixture whose task groups are read from gin when first used, not at registration.

  `groups_fn()` returns [(task names, is_span_corruption)]; supervised tasks get
  `temperature_rate`; span-corruption corpora get `corpus_rate`, scaled in a combined mixture
  so that together they have `span_fraction()` of the total rate.
  """

  def __init__(self, name, tasks, default_rate=None, groups_fn=None, **kwargs):
    self._groups_fn = None  # Not resolved while registering: gin is not parsed yet.
    self._kwargs = kwargs
    self._resolved_key = None
    self._resolving = False
    super().__init__(name, tasks, default_rate=default_rate, **kwargs)
    self._groups_fn = groups_fn

  def _resolve(self):
    if self._resolving or self._groups_fn is None:
      return
    groups = self._groups_fn()
    # Counts are not in the key: they change only with the data or gin `example_counts`.
    key = (tuple((tuple(names), span) for names, span in groups), span_fraction(),
           rates.mixing_temperature(), rates.corpus_temperature(), rates.maximum_examples(),
           tuple(sorted(rates.example_counts().items())))
    if key == self._resolved_key:
      return
    self._resolving = True
    try:
      super().__init__(self._name, self._rated(groups), **self._kwargs)
      self._resolved_key = key
    finally:
      self._resolving = False

  def _rated(self, groups):
    supervised = [n for names, span in groups if not span for n in names]
    corpus = [n for names, span in groups if span for n in names]
    rated = [(n, temperature_rate) for n in supervised]
    if corpus:
      corpus_rates = [corpus_rate(seqio.get_mixture_or_task(n)) for n in corpus]
      scale = 1.0
      if supervised:  # The corpora together get span_fraction of the total.
        total = sum(temperature_rate(seqio.get_mixture_or_task(n)) for n in supervised)
        scale = span_fraction() / (1.0 - span_fraction()) * total / sum(corpus_rates)
      rated += [(n, r * scale) for n, r in zip(corpus, corpus_rates)]
    return rated

  @property
  def tasks(self):
    self._resolve()
    return super().tasks

  @property
  def total_rate(self):
    self._resolve()
    return super().total_rate

  def get_rate(self, task):
    self._resolve()
    return super().get_rate(task)

  def get_dataset(self, *args, **kwargs):
    self._resolve()
    return super().get_dataset(*args, **kwargs)


def _english():
  return [intermediate.task_name(n) for n in all_nine_tasks()]


def _span(langs):
  return [f"{catalog.PREFIX}span_{span_source()}_{l}" for l in langs]


def _translated(langs):
  return [intermediate.task_name(n, l) for n in all_nine_tasks() for l in langs]


LOW = languages.LOW_RESOURCE_LANGUAGES
HIGH = languages.HIGH_RESOURCE_LANGUAGES
STUDY_MIXTURES = {
    "inter_all9": lambda: [(_english(), False)],
    "inter_all9_plus_span_lowres": lambda: [(_english(), False), (_span(LOW), True)],
    "span_lowres": lambda: [(_span(LOW), True)],
    "span_highres": lambda: [(_span(HIGH), True)],
    "translated_lowres": lambda: [(_translated(LOW), False)],
    "translated_lowres_plus_span": lambda: [(_translated(LOW), False), (_span(LOW), True)],
    "inter_all9_plus_translated_lowres": lambda: [(_english() + _translated(LOW), False)],
    "inter_all9_plus_translated_lowres_plus_span":
        lambda: [(_english() + _translated(LOW), False), (_span(LOW), True)],
}


def register():
  for short_name, groups_fn in STUDY_MIXTURES.items():
    name = f"{catalog.PREFIX}{short_name}"
    # Registered with the default groups; resolved again from gin when used.
    names = [n for group, _ in groups_fn() for n in group]
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, names, default_rate=1.0, mixture_cls=DeferredMixture,
                              groups_fn=groups_fn)
    catalog.ENTRIES[name] = catalog.Entry(name, "mixture", "study", None, (), "(its tasks)")
