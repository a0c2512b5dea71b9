"""XTREME-R targets: an English training task and one eval task per official language.

Names (family = xnli, xcopa, udpos, panx, xquad, mlqa, tydiqa, tatoeba, mewslix, lareqa):
  xlt_{family}_train          English training data (none for tatoeba)
  xlt_{family}_eval_{lang}    one per official language; splits where the data has them
  xlt_{family}_zeroshot       mixture: the train task + every eval task
  xlt_xcopa_siqa_train        English SIQA in the XCOPA format (XTREME-R: SIQA, then COPA)
Sources read the XTREME-R download layout under the XTREME-R data dir (gin
`xtreme_data_dir.path` or $XTREME_DATA_DIR), resolved when a dataset is first built. Eval
tasks read, by gin `target_source` (xltransfer.data.paths), the download ("files": its test
gold is hidden, so those splits give predictions only), the labelled original releases
("original", under gin `original_data_dir.path` or $XTREME_ORIGINAL_DATA_DIR) or TFDS
("tfds"). Every eval source reports `provenance(split)` (xltransfer.data.gold) and
`describe(split)`, the source and split its scores come from (`xltransfer tasks list`).
"""
import dataclasses
import functools
import glob
import os
from typing import Callable

from xltransfer.data import gold, languages, paths, preprocessors, readers, retrieval, sources
from xltransfer.data.sources import INT, STRING, STRINGS
from xltransfer.errors import ConfigError, DataFormatError, UserError
from xltransfer.tasks import catalog, metrics, tfds_targets

NLI = {"premise": STRING, "hypothesis": STRING, "label": STRING}
QA = {"id": STRING, "question": STRING, "context": STRING, "answers": STRINGS}
TAGS = {"tokens": STRINGS, "tags": STRINGS}
COPA = {"premise": STRING, "question": STRING, "choices": STRINGS, "label": INT}
PAIR = {"query": STRING, "candidate": STRING}
# Eval examples that carry their cross-language `item` (docs/interfaces.md, "Evaluation
# outputs"; "" where a file lacks it). QA takes its item from the id (preprocessors).
ITEM = {"item": STRING}


def _resolve(task, root, parts, hint=""):
  """The path of parts under root ("files": the XTREME-R dir, "original": the originals' dir).

  The file name (last part) may be a tuple of alternatives: the first that exists is read,
  and a missing file is reported under the first name, with `hint` saying where to get it.
  """
  *directory, names = parts
  names = names if isinstance(names, tuple) else (names,)
  where = paths.original_path if root == "original" else paths.xtreme_path
  candidates = [where(task, *directory, n) for n in names]
  path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
  if not os.path.isfile(path):
    raise UserError(f"task {task} needs the file {path}, which does not exist"
                    + (f"; {hint}" if hint else ""))
  return path


def _loader(task, reader, *parts):
  """A zero-argument loader that finds the file under the XTREME-R dir when called."""
  return lambda: reader(_resolve(task, "files", parts))


def _training_loader(task, reader, *parts):
  """A loader of a training task's file: every example must carry its gold (the readers'
  `training`), so an unlabelled line is an error naming file and line, not an empty target."""
  return _loader(task, functools.partial(reader, training=True), *parts)


def _location(*parts, root="$XTREME_DATA_DIR"):
  *directory, names = parts
  if isinstance(names, tuple):
    names = " or ".join(names)
  return os.path.join(root, *directory, names)


DOWNLOAD = "XTREME-R download"
# The split names the download's own files use.
DOWNLOAD_SPLIT = {"validation": "dev", "test": "test", "train": "train"}


@dataclasses.dataclass(frozen=True)
class Origin:
  """Where one eval split of one language is read from under one target source."""
  root: str  # "files" (the XTREME-R download dir) or "original" (the originals' dir)
  release: str  # Provenance.source: "XTREME-R download", "XNLI 1.0 release", ...
  split: str  # that release's name for the split ("dev", "val", "test")
  parts: tuple  # path under root; the last part may be a tuple of alternative names
  read: Callable[[str], list]
  check: Callable = readers.no_gold_check  # (examples, path) -> (examples, no_gold)
  labelled: bool = True  # whether the release carries this split's gold
  hint: str = ""  # where to get the file, for the missing-file error
  directory: bool = False  # parts name a directory (original releases only), read() gets it
  files: str = ""  # for a directory: which files under it are read

  def location(self) -> str:
    where = _location(*self.parts, root="$XTREME_DATA_DIR" if self.root == "files"
                      else f"${paths.ORIGINAL_ENV_VAR}")
    return os.path.join(where, self.files) if self.files else where

  def describe(self) -> str:
    gold = "labelled" if self.labelled else "no gold: predictions only"
    if self.hint and self.root == "files":
      gold += "; the download script does not fetch it"
    return f"{self.release} {self.split}, {self.location()} ({gold})"

  def load(self, task) -> sources.Loaded:
    if self.directory:  # the reader finds its files under a directory
      path = paths.original_path(task, *self.parts)
      if not os.path.isdir(path):
        raise UserError(f"task {task} needs the directory {path}, which does not exist"
                        + (f"; {self.hint}" if self.hint else ""))
    else:
      path = _resolve(task, self.root, self.parts, self.hint)
    examples, no_gold = self.check(self.read(path), path)
    location = os.path.join(path, self.files) if self.files else path
    return sources.Loaded(examples, gold.Provenance(self.release, location, self.split, no_gold))


class Family:
  """How one XTREME-R target reads, formats and scores its data.

  eval_files: split -> function(lang) -> path parts in the download layout (None: no such
  split for lang); download_gold: the splits whose gold the download keeps (its test gold is
  hidden); gold_check: recognises a stripped file; originals: split -> function(lang) ->
  Origin in an original release (None: read the download). eval_signature: the eval tasks'
  fields, when they carry more than the training task's (an `item`).
  """

  def __init__(self, name, signature, preprocessor, metric_fns, postprocess_fn, train_files,
               eval_files, reader, train_reader=None, eval_metric_fns=None,
               download_gold=("validation",), gold_check=readers.no_gold_check, originals=None,
               eval_reader=None, release_names=None, eval_signature=None):
    self.name = name
    self.signature = signature
    self.eval_signature = eval_signature or signature
    self.preprocessor = preprocessor
    self.metric_fns = metric_fns
    self.postprocess_fn = postprocess_fn
    self.train_files = train_files  # split -> path parts, or None
    self.eval_files = eval_files  # split -> function(lang) -> path parts
    self.reader = reader
    self.eval_reader = eval_reader or reader  # the download's eval files
    self.train_reader = train_reader or reader
    self.eval_metric_fns = eval_metric_fns or (lambda lang: metric_fns)
    self.download_gold = frozenset(download_gold)
    self.gold_check = gold_check
    self.originals = originals or {}
    self.release_names = release_names or DOWNLOAD_SPLIT
    # Multiple choice (examples carry `choices`) is scored by rank classification.
    self.evaluation = (catalog.RANK_CLASSIFICATION if "choices" in self.eval_signature
                       else catalog.GENERATION)

  def register(self):
    names = [self._register_train()] if self.train_files else []
    names += [self._register_eval(lang) for lang in languages.TARGET_LANGUAGES[self.name]]
    catalog.register_mixture(f"{catalog.PREFIX}{self.name}_zeroshot", names,
                             family=self.name, default_rate=1.0)

  def _register_train(self):
    name = f"{catalog.PREFIX}{self.name}_train"
    loaders = {s: _training_loader(name, self.train_reader, *p)
               for s, p in self.train_files.items()}
    tfds_fn = tfds_targets.train_dataset_fn(self.name)
    alternative = (lambda: paths.target_source(self.name) == "tfds", tfds_fn) if tfds_fn else None
    data = ", ".join(_location(*p) for p in self.train_files.values())
    catalog.register_task(
        name, kind="target", family=self.name, language="en",
        data=data + (" (or tfds with gin target_source.value='tfds')" if tfds_fn else ""),
        source=sources.FileDataSource(loaders, self.signature, alternative),
        preprocessors=[self.preprocessor, *catalog.standard_tail()],
        metric_fns=self.metric_fns, postprocess_fn=self.postprocess_fn,
        evaluation=self.evaluation)
    return name

  def download_origin(self, lang, split) -> Origin:
    return Origin("files", DOWNLOAD, self.release_names[split], self.eval_files[split](lang),
                  self.eval_reader, self.gold_check, split in self.download_gold,
                  DOWNLOAD_HINTS.get((self.name, lang), ""))

  def origin(self, lang, split) -> Origin:
    """Where (lang, split) is read from under the current target source (TFDS aside)."""
    if paths.target_source(self.name) == "original" and split in self.originals:
      origin = self.originals[split](lang)
      if origin is not None:
        return origin
    return self.download_origin(lang, split)

  def describe(self, lang, split, uses_tfds) -> str:
    """Which source and split (lang, split) scores from, without reading anything."""
    if uses_tfds():
      where = tfds_targets.provenance(self.name, lang, split)
      return f"{where.source} {where.split}, {where.location} (labelled)"
    return self.origin(lang, split).describe()

  def _register_eval(self, lang):
    name = f"{catalog.PREFIX}{self.name}_eval_{lang}"
    splits = [s for s, f in self.eval_files.items() if f(lang) is not None]
    loaders = {s: functools.partial(lambda s: self.origin(lang, s).load(name), s) for s in splits}
    tfds_fn = tfds_targets.dataset_fn(self.name, lang)
    uses_tfds = lambda: tfds_fn is not None and paths.target_source(self.name) == "tfds"
    alternative = ((uses_tfds, tfds_fn,
                    functools.partial(tfds_targets.provenance, self.name, lang))
                   if tfds_fn else None)
    data = ", ".join(_location(*self.eval_files[s](lang)) for s in splits)
    originals = [o.location() for s in splits if s in self.originals
                 for o in [self.originals[s](lang)] if o is not None]
    catalog.register_task(
        name, kind="target", family=self.name, language=lang,
        data=data + (f"; original: {'; '.join(originals)}" if originals else "")
        + (" (or tfds with gin target_source.value='tfds')" if tfds_fn else ""),
        source=sources.FileDataSource(
            loaders, self.eval_signature, alternative,
            describe=lambda split: self.describe(lang, split, uses_tfds)),
        preprocessors=[self.preprocessor, *catalog.standard_tail()],
        metric_fns=self.eval_metric_fns(lang), postprocess_fn=self.postprocess_fn,
        evaluation=self.evaluation)
    return name


# XQuAD Romanian came after XTREME: the download script does not fetch it.
DOWNLOAD_HINTS = {
    ("xquad", "ro"): "XTREME-R's download script does not fetch XQuAD Romanian: get "
                     "xquad.ro.json from https://github.com/deepmind/xquad and put it there, or "
                     "read the original releases (gin target_source.per_target = "
                     "{'xquad': 'original'}, xquad/xquad.ro.json under original_data_dir.path)",
}


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


def _lareqa_pairs(path, training=False):
  """SQuAD v1.1 as (question, candidate) pairs for dual-encoder training, as XTREME-R's LAReQA
  baseline builds them (third_party/processors/lareqa.py): the candidate is the sentence that
  holds the first answer's start, followed by its paragraph (newlines removed). Sentences are
  cut by `sentence_breaks` below, a simpler rule than the baseline's sb_sed sentence breaker
  (evaluation reads XQuAD-R's own sentence_breaks, as the baseline does). Unanswered
  questions are left out, as there; with `training`, a file without a single pair is an error."""
  document = readers.read_json(path)
  pairs = []
  for i, article in enumerate(document.get("data", ())):
    for j, paragraph in enumerate(article.get("paragraphs", ())):
      if "context" not in paragraph:
        raise DataFormatError(path, None, f"data[{i}].paragraphs[{j}]: missing field 'context'")
      context = paragraph["context"]
      breaks = sentence_breaks(context)
      for qa in paragraph.get("qas", ()):
        if not qa.get("answers"):
          continue  # the baseline trains on answered questions only
        if "question" not in qa or "answer_start" not in qa["answers"][0]:
          raise DataFormatError(path, None, f"data[{i}].paragraphs[{j}]: question "
                                f"{qa.get('id')!r} lacks 'question' or 'answer_start'")
        start = qa["answers"][0]["answer_start"]
        sentence = next((context[b:e] for b, e in breaks if b <= start < e), None)
        if sentence:
          pairs.append({"query": qa["question"],
                        "candidate": (sentence + context).replace("\n", "")})
  if training and not pairs:
    raise DataFormatError(path, None, "no answered question to make a training pair of")
  return pairs


def sentence_breaks(text):
  """(start, end) of each sentence, cut after `.`, `?` or `!` followed by a space (SQuAD
  contexts are well punctuated English); spaces between sentences belong to neither."""
  spans, start = [], 0
  for i, ch in enumerate(text):
    if ch in ".?!" and (i + 1 == len(text) or text[i + 1] == " "):
      spans.append((start, i + 1))
      start = i + 1
      while start < len(text) and text[start] == " ":
        start += 1
  if text[start:].strip():
    spans.append((start, len(text.rstrip())))
  return spans


class RetrievalFamily(Family):
  """A retrieval target: (query, candidate) pairs for dual-encoder training; eval tasks read
  through `xltransfer.data.retrieval` so that their queries are the evaluator's.

  Retrieval is scored by the evaluator over the retrieval sets (accuracy or mAP@20), so these
  eval tasks carry no seqio metric; each example pairs a query with one gold candidate ("" when
  the set has no gold), and the source reports the set's provenance.
  """

  def __init__(self, name, train_files, train_reader, load_set, splits, location, describe_fn,
               tfds_languages=frozenset()):
    query_prefix, candidate_prefix = retrieval.PREFIXES[name]
    super().__init__(name, PAIR,
                     preprocessors.retrieval_pair(query_prefix, candidate_prefix, "query",
                                                  "candidate"),
                     (), None, train_files, {}, None, train_reader=train_reader)
    self.load_set = load_set  # (lang, split) -> RetrievalSet
    self.splits = splits
    self.location = location
    self.describe_fn = describe_fn  # (lang, split, target source) -> str
    self.tfds_languages = tfds_languages  # read from TFDS by load_set when gin says so
    self.evaluation = catalog.RETRIEVAL

  def _register_eval(self, lang):
    name = f"{catalog.PREFIX}{self.name}_eval_{lang}"
    loaders = {s: functools.partial(self._queries, lang, s) for s in self.splits}
    data = self.location
    if lang in self.tfds_languages:
      data += f" (or tfds {self.name}/{self.name}_{lang} with gin target_source.value='tfds')"
    describe = lambda split: self.describe_fn(lang, split, paths.target_source(self.name))
    catalog.register_task(
        name, kind="target", family=self.name, language=lang, data=data,
        source=sources.FileDataSource(loaders, PAIR, describe=describe),
        preprocessors=[self.preprocessor, *catalog.standard_tail()],
        evaluation=self.evaluation)
    return name

  def _queries(self, lang, split):
    rs = self.load_set(lang, split)
    by_id = dict(zip(rs.candidate_ids, rs.candidates))
    examples = [{"query": q, "candidate": by_id.get(min(g), "") if g else ""}
                for q, g in zip(rs.queries, rs.gold)]
    return sources.Loaded(examples, rs.provenance)


def _describe_tatoeba(lang, split, source):
  del split
  if source == "tfds" and lang in retrieval.TFDS_TATOEBA_LANGUAGES:
    return f"tfds tatoeba train, tatoeba/tatoeba_{lang} (labelled)"
  if source == "original":
    code = retrieval.TATOEBA_CODES[lang]
    return (f"Tatoeba (LASER data/tatoeba/v1) test, ${paths.ORIGINAL_ENV_VAR}/tatoeba/"
            f"tatoeba.{code}-eng.{{{code},eng}} (labelled)")
  return (f"{DOWNLOAD} test, $XTREME_DATA_DIR/tatoeba/{lang}-en.{{{lang},en}} (no gold: "
          "predictions only; its English side is sorted)")


def _describe_mewslix(lang, split, source):
  name = {"validation": "dev"}.get(split, split)
  if source == "original":
    return (f"Mewsli-X release {name}, ${paths.ORIGINAL_ENV_VAR}/mewslix/"
            f"wikinews_mentions-{name}.jsonl ({lang} mentions; labelled)")
  gold = "labelled" if split == "validation" else "no gold: predictions only"
  return (f"{DOWNLOAD} {name}, $XTREME_DATA_DIR/mewslix/wikinews_mentions/{name}-{lang}.jsonl "
          f"({gold})")


def _describe_lareqa(lang, split, source):
  del lang, split
  root = f"${paths.ORIGINAL_ENV_VAR}" if source == "original" else "$XTREME_DATA_DIR"
  return f"XQuAD-R test, {root}/lareqa/xquad-r/{{11 languages}}.json (labelled)"


# -- The original releases (labelled), under gin original_data_dir.path ------------------------

def _xnli_original(split):
  return lambda lang: Origin(
      "original", "XNLI 1.0 release", split, ("XNLI-1.0", f"xnli.{split}.tsv"),
      functools.partial(readers.read_xnli_release, lang=lang), readers.nli_no_gold)


def _xcopa_original(split):
  return lambda lang: Origin(
      "original", "XCOPA release (cambridgeltl/xcopa)", split,
      ("xcopa", "data", lang, f"{split}.{lang}.jsonl"), readers.read_xcopa, readers.copa_no_gold)


def _panx_original(split):
  return lambda lang: Origin(
      "original", "WikiANN (Rahimi et al. 2019 split)", split, ("panx", lang, split),
      readers.read_panx_release, readers.tags_no_gold)


def _xquad_original(lang):
  return Origin("original", "XQuAD release (deepmind/xquad)", "test",
                ("xquad", f"xquad.{lang}.json"), readers.read_squad_json, readers.qa_no_gold)


def _mlqa_original(split):
  return lambda lang: Origin(
      "original", "MLQA v1 release", split,
      ("MLQA_V1", split, f"{split}-context-{lang}-question-{lang}.json"), readers.read_squad_json,
      readers.qa_no_gold)


def _tydiqa_original(lang):
  name = readers.TYDIQA_LANGUAGE_NAMES[lang]
  return Origin("original", "TyDi QA GoldP v1.1 release", "dev",
                ("tydiqa", ("tydiqa-goldp-v1.1-dev.json",
                            f"tydiqa-goldp-v1.1-dev/tydiqa-goldp-dev-{name}.json")),
                functools.partial(readers.read_tydiqa_release, lang=lang), readers.qa_no_gold)


# XTREME-R reads UD 2.5 for XTREME's languages and UD 2.7 for the ones it added
# (scripts/download_data.sh, download_treebank).
UD_27_LANGUAGES = frozenset("lt pl uk wo ro".split())


def _ud_files(directory, lang, split):
  """Every `{lang}_*-ud-{split}.conllu` of the release, in file-name order (the order in which
  udpos_preprocess concatenates a language's treebanks)."""
  found = sorted(glob.glob(os.path.join(directory, "UD_*", f"{lang}_*-ud-{split}.conllu")),
                 key=os.path.basename)
  if not found:
    raise UserError(f"no {lang}_*-ud-{split}.conllu under {directory}/UD_*/ (the Universal "
                    f"Dependencies release that XTREME-R reads for {lang})")
  return found


def _udpos_original(split):
  def origin(lang):
    version = "2.7" if lang in UD_27_LANGUAGES else "2.5"
    return Origin(
        "original", f"Universal Dependencies {version}", split, (f"ud-treebanks-v{version}",),
        lambda directory: readers.read_ud_treebanks(_ud_files(directory, lang, split), lang),
        readers.tags_no_gold, directory=True, files=f"UD_*/{lang}_*-ud-{split}.conllu",
        hint=f"unpack ud-treebanks-v{version}.tgz from lindat.mff.cuni.cz there")
  return origin


def families():
  # The download's XNLI files carry no pairID: xnli_preprocess (google-research/xtreme
  # utils_preprocess.py) writes each language's rows of XNLI 1.0's xnli.{dev,test}.tsv in the
  # release's order, keeping only the sentences (and dev label). The release has every pair in
  # every language (2490 dev / 5010 test rows each) and lists each language's rows in one
  # pairID order (the per-language datasets cut from it in file order begin with the same pair
  # in every language), so line k is one item in every language. Were a file not so aligned,
  # its items would group unrelated lines: wrong clusters for the bootstrap, same scores.
  nli = Family(
      "xnli", NLI, preprocessors.nli("xnli"), [metrics.accuracy], metrics.text,
      {"train": ("xnli", "train-en.tsv"), "validation": ("xnli", "dev-en.tsv")},
      _split_files("xnli", "tsv"), functools.partial(readers.read_nli_tsv, quoted=True),
      gold_check=readers.nli_no_gold,
      originals={"validation": _xnli_original("dev"), "test": _xnli_original("test")},
      eval_reader=functools.partial(readers.read_nli_tsv, quoted=True, line_items=True),
      eval_signature={**NLI, **ITEM})
  xcopa = Family(
      "xcopa", COPA, preprocessors.xcopa, [metrics.accuracy], metrics.text,
      {"train": ("xcopa", "train-en.jsonl"),
       "validation": ("xcopa", tuple(f"{p}-en.jsonl" for p in XCOPA_VALIDATION))},
      _split_files("xcopa", "jsonl", validation=XCOPA_VALIDATION), readers.read_xcopa,
      gold_check=readers.copa_no_gold, release_names={"validation": "val", "test": "test"},
      originals={"validation": _xcopa_original("val"), "test": _xcopa_original("test")},
      eval_signature={**COPA, **ITEM})
  udpos = Family(
      "udpos", TAGS, preprocessors.tagging("udpos"), [metrics.seqeval], metrics.tag_sequence,
      {"train": ("udpos", "train-en.tsv"), "validation": ("udpos", "dev-en.tsv")},
      _split_files("udpos", "tsv", test_only=UDPOS_TEST_ONLY), readers.read_udpos,
      gold_check=readers.tags_no_gold,
      originals={"validation": _udpos_original("dev"), "test": _udpos_original("test")})
  panx = Family(
      "panx", TAGS, preprocessors.tagging("panx"), [metrics.seqeval], metrics.tag_sequence,
      {"train": ("panx", "train-en.tsv"), "validation": ("panx", "dev-en.tsv")},
      _split_files("panx", "tsv"), readers.read_panx, gold_check=readers.tags_no_gold,
      originals={"validation": _panx_original("dev"), "test": _panx_original("test")})
  xquad = Family(
      "xquad", QA, preprocessors.parallel_extractive_qa, [metrics.squad], metrics.qa_answers,
      SQUAD_TRAIN, {"test": lambda lang: ("xquad", f"xquad.{lang}.json")},
      readers.read_squad_json, download_gold=(), gold_check=readers.qa_no_gold,
      originals={"test": _xquad_original})
  mlqa = Family(
      "mlqa", QA, preprocessors.parallel_extractive_qa, [metrics.squad], metrics.qa_answers,
      SQUAD_TRAIN,
      {"validation": _mlqa_file("dev"), "test": _mlqa_file("test")}, readers.read_squad_json,
      eval_metric_fns=lambda lang: [metrics.mlqa(lang)], gold_check=readers.qa_no_gold,
      originals={"validation": _mlqa_original("dev"), "test": _mlqa_original("test")})
  tydiqa = Family(
      "tydiqa", QA, preprocessors.extractive_qa, [metrics.squad], metrics.qa_answers,
      {"train": ("tydiqa", "tydiqa-goldp-v1.1-train", "tydiqa.goldp.en.train.json"),
       "validation": ("tydiqa", "tydiqa-goldp-v1.1-dev", "tydiqa.goldp.en.dev.json")},
      {"validation": lambda lang: ("tydiqa", "tydiqa-goldp-v1.1-dev",
                                   f"tydiqa.goldp.{lang}.dev.json")},
      readers.read_squad_json, download_gold=(), gold_check=readers.qa_no_gold,
      originals={"validation": _tydiqa_original})
  tatoeba = RetrievalFamily(
      "tatoeba", None, None, lambda lang, split: retrieval.load_tatoeba(None, lang), ("test",),
      _location("tatoeba", "{xx}-en.{xx}, {xx}-en.en"), _describe_tatoeba,
      retrieval.TFDS_TATOEBA_LANGUAGES)
  mewslix = RetrievalFamily(
      "mewslix", {"train": ("mewslix", "wikipedia_pairs-train.jsonl"),
                  "validation": ("mewslix", "wikipedia_pairs-dev.jsonl")},
      retrieval.read_mewslix_pairs,
      lambda lang, split: retrieval.load_mewslix(None, lang, {"validation": "dev"}.get(split, split)),
      ("validation", "test"),
      _location("mewslix", "wikinews_mentions/{dev,test}-{lang}.jsonl, candidate_set_entities.jsonl"),
      _describe_mewslix)
  lareqa = RetrievalFamily(
      "lareqa", SQUAD_TRAIN, _lareqa_pairs, lambda lang, split: retrieval.load_lareqa(None, lang),
      ("test",), _location("lareqa", "xquad-r", "{lang}.json"), _describe_lareqa)
  return [nli, xcopa, udpos, panx, xquad, mlqa, tydiqa, tatoeba, mewslix, lareqa]


# Social IQa, which XTREME-R trains on before COPA (its XCOPA baseline), as XTREME-R's
# download script writes it under the XTREME-R data dir.
SIQA_FILES = {"train": ("siqa", "socialIQa_v1.4_trn.jsonl"),
              "validation": ("siqa", "socialIQa_v1.4_dev.jsonl")}
SIQA_TASK = f"{catalog.PREFIX}xcopa_siqa_train"


def register_siqa():
  """`xlt_xcopa_siqa_train`: English SIQA in the XCOPA format (three choices), the first of
  XTREME-R's two XCOPA training stages; fine-tune on it, then on `xlt_xcopa_train` (COPA)."""
  loaders = {s: _training_loader(SIQA_TASK, readers.read_siqa, *p)
             for s, p in SIQA_FILES.items()}
  catalog.register_task(
      SIQA_TASK, kind="target", family="xcopa", language="en",
      data=", ".join(_location(*p) for p in SIQA_FILES.values()),
      source=sources.FileDataSource(loaders, COPA),
      preprocessors=[preprocessors.xcopa, *catalog.standard_tail()],
      metric_fns=[metrics.accuracy], postprocess_fn=metrics.text,
      evaluation=catalog.RANK_CLASSIFICATION)
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
