"""XTREME-R targets: an English training task and one eval task per official language.

Names (family = xnli, xcopa, udpos, panx, xquad, mlqa, tydiqa, tatoeba, mewslix, lareqa):
  xlt_{family}_train          English training data (none for tatoeba)
  xlt_{family}_eval_{lang}    one per official language; splits where the data has them
  xlt_{family}_zeroshot       mixture: the train task + every eval task
  xlt_xcopa_siqa_train        English SIQA in the XCOPA format (XTREME-R: SIQA, then COPA)
Sources read the XTREME-R download layout under the XTREME-R data dir (gin
`xtreme_data_dir.path` or $XTREME_DATA_DIR), resolved when a dataset is first built.
"""
import functools
import os


from xltransfer.data import languages, paths, preprocessors, readers, retrieval, sources
from xltransfer.data.sources import INT, STRING, STRINGS
from xltransfer.errors import ConfigError
from xltransfer.tasks import catalog, metrics, tfds_targets

NLI = {"premise": STRING, "hypothesis": STRING, "label": STRING}
QA = {"id": STRING, "question": STRING, "context": STRING, "answers": STRINGS}
TAGS = {"tokens": STRINGS, "tags": STRINGS}
COPA = {"premise": STRING, "question": STRING, "choices": STRINGS, "label": INT}
PAIR = {"query": STRING, "candidate": STRING}


def _loader(task, reader, *parts):
  """A zero-argument loader that finds the file under the XTREME-R dir when called.

  The file name (last part) may be a tuple of alternatives: the first that exists is read,
  and a missing file is reported under the first name.
  """
  def load():
    *directory, names = parts
    names = names if isinstance(names, tuple) else (names,)
    candidates = [paths.xtreme_path(task, *directory, n) for n in names]
    path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    return reader(paths.require_file(path, task))
  return load


def _location(*parts):
  *directory, names = parts
  if isinstance(names, tuple):
    names = " or ".join(names)
  return os.path.join("$XTREME_DATA_DIR", *directory, names)


class Family:
  """How one XTREME-R target reads, formats and scores its data."""

  def __init__(self, name, signature, preprocessor, metric_fns, postprocess_fn, train_files,
               eval_files, reader, train_reader=None, eval_metric_fns=None):
    self.name = name
    self.signature = signature
    self.preprocessor = preprocessor
    self.metric_fns = metric_fns
    self.postprocess_fn = postprocess_fn
    self.train_files = train_files  # split -> path parts, or None
    self.eval_files = eval_files  # split -> function(lang) -> path parts
    self.reader = reader
    self.train_reader = train_reader or reader
    self.eval_metric_fns = eval_metric_fns or (lambda lang: metric_fns)

  def register(self):
    names = [self._register_train()] if self.train_files else []
    names += [self._register_eval(lang) for lang in languages.TARGET_LANGUAGES[self.name]]
    catalog.register_mixture(f"{catalog.PREFIX}{self.name}_zeroshot", names,
                             family=self.name, default_rate=1.0)

  def _register_train(self):
    name = f"{catalog.PREFIX}{self.name}_train"
    loaders = {s: _loader(name, self.train_reader, *p) for s, p in self.train_files.items()}
    tfds_fn = tfds_targets.train_dataset_fn(self.name)
    alternative = (lambda: paths.target_source() == "tfds", tfds_fn) if tfds_fn else None
    data = ", ".join(_location(*p) for p in self.train_files.values())
    catalog.register_task(
        name, kind="target", family=self.name, language="en",
        data=data + (" (or tfds with gin target_source.value='tfds')" if tfds_fn else ""),
        source=sources.FileDataSource(loaders, self.signature, alternative),
        preprocessors=[self.preprocessor, *catalog.standard_tail()],
        metric_fns=self.metric_fns, postprocess_fn=self.postprocess_fn)
    return name

  def _register_eval(self, lang):
    name = f"{catalog.PREFIX}{self.name}_eval_{lang}"
    files = {s: f(lang) for s, f in self.eval_files.items() if f(lang) is not None}
    loaders = {s: _loader(name, self.reader, *p) for s, p in files.items()}
    tfds_fn = tfds_targets.dataset_fn(self.name, lang)
    alternative = (lambda: paths.target_source() == "tfds", tfds_fn) if tfds_fn else None
    data = ", ".join(_location(*p) for p in files.values())
    catalog.register_task(
        name, kind="target", family=self.name, language=lang,
        data=data + (" (or tfds with gin target_source.value='tfds')" if tfds_fn else ""),
        source=sources.FileDataSource(loaders, self.signature, alternative),
        preprocessors=[self.preprocessor, *catalog.standard_tail()],
        metric_fns=self.eval_metric_fns(lang), postprocess_fn=self.postprocess_fn)
    return name


def _split_files(directory, extension, splits=("validation", "test"), validation="dev",
                 test_only=frozenset()):
  """{split}-{lang}.{ext} files as the download script names them (validation is `dev`, for
  XCOPA `val`; a tuple of names takes the first that exists). Languages in `test_only` have
  no validation data (the function returns None for them)."""
  file_split = {"validation": validation, "test": "test", "train": "train"}

  def name(split, lang):
    prefixes = file_split[split] if isinstance(file_split[split], tuple) else (file_split[split],)
    names = tuple(f"{p}-{lang}.{extension}" for p in prefixes)
    return names if len(names) > 1 else names[0]

  def parts(split, lang):
    if split != "test" and lang in test_only:
      return None
    return directory, name(split, lang)
  return {s: functools.partial(parts, s) for s in splits}


# Universal Dependencies 2.5 has only test treebanks for these UD-POS languages (Kazakh's
# small training set is not used by XTREME-R), so their eval tasks have only a test split.
UDPOS_TEST_ONLY = frozenset({"kk", "th", "tl", "yo"})


# XTREME-R's download script writes XCOPA's validation files as val-{lang}.jsonl (COPA's own
# split name); dev-{lang}.jsonl, the name the other tasks use, is read too.
XCOPA_VALIDATION = ("val", "dev")


SQUAD_TRAIN = {"train": ("squad", "train-v1.1.json"), "validation": ("squad", "dev-v1.1.json")}


def _mlqa_file(split):
  return lambda lang: ("mlqa", "MLQA_V1", split, f"{split}-context-{lang}-question-{lang}.json")


def _lareqa_pairs(path):
  """SQuAD v1.1 as (question, answer sentence) pairs for dual-encoder training."""
  pairs = []
  for ex in readers.read_squad_json(path):
    answer = ex["answers"][0] if ex["answers"] else ""
    sentence = next((s for s in split_sentences(ex["context"]) if answer and answer in s), answer)
    pairs.append({"query": ex["question"], "candidate": sentence})
  return pairs


def split_sentences(text):
  """Rough sentence split on `. ` / `? ` / `! ` (SQuAD contexts are well punctuated English)."""
  out, start = [], 0
  for i, ch in enumerate(text):
    if ch in ".?!" and (i + 1 == len(text) or text[i + 1] == " "):
      out.append(text[start:i + 1].strip())
      start = i + 1
  if text[start:].strip():
    out.append(text[start:].strip())
  return out


class RetrievalFamily(Family):
  """A retrieval target: (query, candidate) pairs for dual-encoder training; eval tasks read
  through `xltransfer.data.retrieval` so that their queries are the evaluator's.

  Retrieval is scored by the evaluator over the retrieval sets (accuracy or mAP@20), so these
  eval tasks carry no seqio metric; each example pairs a query with one gold candidate.
  """

  def __init__(self, name, train_files, train_reader, load_set, splits, location,
               tfds_languages=frozenset()):
    query_prefix, candidate_prefix = retrieval.PREFIXES[name]
    super().__init__(name, PAIR,
                     preprocessors.retrieval_pair(query_prefix, candidate_prefix, "query",
                                                  "candidate"),
                     (), None, train_files, {}, None, train_reader=train_reader)
    self.load_set = load_set  # (lang, split) -> RetrievalSet
    self.splits = splits
    self.location = location
    self.tfds_languages = tfds_languages  # read from TFDS by load_set when gin says so

  def _register_eval(self, lang):
    name = f"{catalog.PREFIX}{self.name}_eval_{lang}"
    loaders = {s: functools.partial(self._queries, lang, s) for s in self.splits}
    data = self.location
    if lang in self.tfds_languages:
      data += f" (or tfds {self.name}/{self.name}_{lang} with gin target_source.value='tfds')"
    catalog.register_task(
        name, kind="target", family=self.name, language=lang, data=data,
        source=sources.FileDataSource(loaders, PAIR),
        preprocessors=[self.preprocessor, *catalog.standard_tail()])
    return name

  def _queries(self, lang, split):
    rs = self.load_set(lang, split)
    by_id = dict(zip(rs.candidate_ids, rs.candidates))
    return [{"query": q, "candidate": by_id.get(min(g), "") if g else ""}
            for q, g in zip(rs.queries, rs.gold)]


def families():
  nli = Family(
      "xnli", NLI, preprocessors.nli("xnli"), [metrics.accuracy], metrics.text,
      {"train": ("xnli", "train-en.tsv"), "validation": ("xnli", "dev-en.tsv")},
      _split_files("xnli", "tsv"), readers.read_nli_tsv)
  xcopa = Family(
      "xcopa", COPA, preprocessors.xcopa, [metrics.accuracy], metrics.text,
      {"train": ("xcopa", "train-en.jsonl"),
       "validation": ("xcopa", tuple(f"{p}-en.jsonl" for p in XCOPA_VALIDATION))},
      _split_files("xcopa", "jsonl", validation=XCOPA_VALIDATION), readers.read_xcopa)
  udpos = Family(
      "udpos", TAGS, preprocessors.tagging("udpos"), [metrics.seqeval], metrics.tag_sequence,
      {"train": ("udpos", "train-en.tsv"), "validation": ("udpos", "dev-en.tsv")},
      _split_files("udpos", "tsv", test_only=UDPOS_TEST_ONLY), readers.read_udpos)
  panx = Family(
      "panx", TAGS, preprocessors.tagging("panx"), [metrics.seqeval], metrics.tag_sequence,
      {"train": ("panx", "train-en.tsv"), "validation": ("panx", "dev-en.tsv")},
      _split_files("panx", "tsv"), readers.read_panx)
  xquad = Family(
      "xquad", QA, preprocessors.extractive_qa, [metrics.squad], metrics.qa_answers,
      SQUAD_TRAIN, {"test": lambda lang: ("xquad", f"xquad.{lang}.json")},
      readers.read_squad_json)
  mlqa = Family(
      "mlqa", QA, preprocessors.extractive_qa, [metrics.squad], metrics.qa_answers, SQUAD_TRAIN,
      {"validation": _mlqa_file("dev"), "test": _mlqa_file("test")}, readers.read_squad_json,
      eval_metric_fns=lambda lang: [metrics.mlqa(lang)])
  tydiqa = Family(
      "tydiqa", QA, preprocessors.extractive_qa, [metrics.squad], metrics.qa_answers,
      {"train": ("tydiqa", "tydiqa-goldp-v1.1-train", "tydiqa.goldp.en.train.json"),
       "validation": ("tydiqa", "tydiqa-goldp-v1.1-dev", "tydiqa.goldp.en.dev.json")},
      {"validation": lambda lang: ("tydiqa", "tydiqa-goldp-v1.1-dev",
                                   f"tydiqa.goldp.{lang}.dev.json")},
      readers.read_squad_json)
  tatoeba = RetrievalFamily(
      "tatoeba", None, None, lambda lang, split: retrieval.load_tatoeba(None, lang), ("test",),
      _location("tatoeba", "{xx}-en.{xx}, {xx}-en.en"), retrieval.TFDS_TATOEBA_LANGUAGES)
  mewslix = RetrievalFamily(
      "mewslix", {"train": ("mewslix", "wikipedia_pairs-train.jsonl"),
                  "validation": ("mewslix", "wikipedia_pairs-dev.jsonl")},
      retrieval.read_mewslix_pairs,
      lambda lang, split: retrieval.load_mewslix(None, lang, {"validation": "dev"}.get(split, split)),
      ("validation", "test"),
      _location("mewslix", "wikinews_mentions/{dev,test}-{lang}.jsonl, candidate_set_entities.jsonl"))
  lareqa = RetrievalFamily(
      "lareqa", SQUAD_TRAIN, _lareqa_pairs, lambda lang, split: retrieval.load_lareqa(None, lang),
      ("test",), _location("lareqa", "xquad-r", "{lang}.json"))
  return [nli, xcopa, udpos, panx, xquad, mlqa, tydiqa, tatoeba, mewslix, lareqa]


# Social IQa, which XTREME-R trains on before COPA (its XCOPA baseline), as XTREME-R's
# download script writes it under the XTREME-R data dir.
SIQA_FILES = {"train": ("siqa", "socialIQa_v1.4_trn.jsonl"),
              "validation": ("siqa", "socialIQa_v1.4_dev.jsonl")}
SIQA_TASK = f"{catalog.PREFIX}xcopa_siqa_train"


def register_siqa():
  """`xlt_xcopa_siqa_train`: English SIQA in the XCOPA format (three choices), the first of
  XTREME-R's two XCOPA training stages; fine-tune on it, then on `xlt_xcopa_train` (COPA)."""
  loaders = {s: _loader(SIQA_TASK, readers.read_siqa, *p) for s, p in SIQA_FILES.items()}
  catalog.register_task(
      SIQA_TASK, kind="target", family="xcopa", language="en",
      data=", ".join(_location(*p) for p in SIQA_FILES.values()),
      source=sources.FileDataSource(loaders, COPA),
      preprocessors=[preprocessors.xcopa, *catalog.standard_tail()],
      metric_fns=[metrics.accuracy], postprocess_fn=metrics.text)
  return SIQA_TASK


def eval_task(family: str, lang: str) -> str:
  """Name of a target's eval task; unknown families or languages name the valid ones."""
  if family not in languages.TARGET_LANGUAGES:
    raise ConfigError(f"unknown XTREME-R task {family!r}; valid: "
                      f"{' '.join(languages.TARGET_LANGUAGES)}")
  languages.check_language(lang, languages.TARGET_LANGUAGES[family], family)
  return f"{catalog.PREFIX}{family}_eval_{lang}"


def register():
  for family in families():
    family.register()
  register_siqa()
