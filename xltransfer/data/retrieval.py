"""Query and candidate sets of the XTREME-R retrieval targets, for the evaluator.

    rs = load_tatoeba(data_dir, "de")     # or load_mewslix(data_dir, "ja", "test"),
                                          #    load_lareqa(data_dir, "el")
    rs.queries[i], rs.query_ids[i]        # texts to encode with the query side
    rs.candidates[j], rs.candidate_ids[j] # texts to encode with the candidate side
    rs.gold[i]                            # set of candidate ids that answer query i
    rs.query_items[i], rs.query_paragraphs[i]  # LAReQA: query i's cross-language item and
                                          #   its paragraph (None for the other sets)
    rs.provenance                         # what was read; provenance.no_gold: never score it

Tatoeba scores accuracy of the nearest neighbour (xx -> en); Mewsli-X and LAReQA score
mAP@20 (`xltransfer.metrics.map_at_k(rs.gold, ranked_candidate_ids)`).

`data_dir=None` reads what gin `target_source` names for the target (xltransfer.data.paths):
"files", the XTREME-R download (its Tatoeba English side is sorted and its Mewsli-X test
entity ids are empty, so those sets have empty gold and a `no_gold` provenance); "original",
the original releases (LASER's aligned Tatoeba files, Mewsli-X's wikinews_mentions-{split}.jsonl
with entity ids); "tfds", TFDS tatoeba where it has the language. An explicit data_dir is read
in the layout of `source` (default "files").

Queries and candidates are built as XTREME-R's baselines build them, so that a number compares
with the XTREME-R paper's: Mewsli-X (third_party/utils_mewslix.py) queries are the mention, then
its sentence with `{ }` around the mention; candidates are the entity description without its
title; LAReQA (third_party/utils_lareqa.py, evaluate_retrieval.py) candidates are the answer
sentence followed by its paragraph, with sentences cut at the XQuAD-R file's sentence_breaks.
"""
import dataclasses
import functools
import logging
import os
import re
from typing import Optional

from xltransfer.data import gold as gold_lib
from xltransfer.data import languages, paths, readers
from xltransfer.errors import DataFormatError


# Text prefixes of (query, candidate) per retrieval target: the training tasks format their
# pairs with them (tasks/targets.py) and the evaluator embeds with them, so that
# evaluation embeds what a dual encoder was trained on.
PREFIXES = {"tatoeba": ("sentence: ", "sentence: "),
            "mewslix": ("mention: ", "entity: "),
            "lareqa": ("question: ", "answer: ")}

DOWNLOAD = "XTREME-R download"


@dataclasses.dataclass
class RetrievalSet:
  queries: list
  query_ids: list
  candidates: list
  candidate_ids: list
  gold: list  # list of sets of candidate ids, one per query (empty sets without gold)
  provenance: Optional[gold_lib.Provenance] = None
  # Which queries are not independent (docs/interfaces.md, "Evaluation outputs"), where the
  # data says: the same item string for a query's translations, the paragraph it asks about.
  query_items: Optional[list] = None
  query_paragraphs: Optional[list] = None


def _source(data_dir, family, source):
  return source or ("files" if data_dir else paths.target_source(family))


def _dir(data_dir, task, source, *parts):
  if source == "original":
    how = (f"pass data_dir, set ${paths.ORIGINAL_ENV_VAR} or gin `original_data_dir.path` "
           "(docs/tasks.md says where each release comes from)")
    return paths.require_dir(data_dir or paths.original_data_dir(), how, task, *parts)
  how = f"pass data_dir, set ${paths.XTREME_ENV_VAR} or gin `xtreme_data_dir.path`"
  return paths.require_dir(data_dir or paths.xtreme_data_dir(), how, task, *parts)


# -- Tatoeba ------------------------------------------------------------------------------------

# TFDS tatoeba has XTREME's 36 languages; XTREME-R's additions (az lt ms pl ro uk) are files only.
TFDS_TATOEBA_LANGUAGES = frozenset(
    "af ar bg bn de el es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr nl pt ru sw ta te "
    "th tl tr ur vi zh".split())

# LASER's Tatoeba v1 file codes (google-research/xtreme utils_preprocess.tatoeba_preprocess;
# ms is LASER's zsm, Standard Malay).
TATOEBA_CODES = {
    "af": "afr", "ar": "ara", "bg": "bul", "bn": "ben", "de": "deu", "el": "ell", "es": "spa",
    "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin",
    "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat", "kk": "kaz",
    "ko": "kor", "ml": "mal", "mr": "mar", "nl": "nld", "pt": "por", "ru": "rus", "sw": "swh",
    "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur", "ur": "urd", "vi": "vie",
    "zh": "cmn", "az": "aze", "lt": "lit", "pl": "pol", "uk": "ukr", "ro": "ron", "ms": "zsm"}


def tatoeba_files(data_dir, lang, source="files"):
  """(xx file, English file) of lang: `{xx}-en.{xx}`/`{xx}-en.en` in the download,
  `tatoeba.{xxx}-eng.{xxx}`/`.eng` in LASER's release (data/tatoeba/v1)."""
  directory = _dir(data_dir, f"xlt_tatoeba_eval_{lang}", source, "tatoeba")
  if source == "original":
    code = TATOEBA_CODES[lang]
    return (os.path.join(directory, f"tatoeba.{code}-eng.{code}"),
            os.path.join(directory, f"tatoeba.{code}-eng.eng"))
  return (os.path.join(directory, f"{lang}-en.{lang}"), os.path.join(directory, f"{lang}-en.en"))


def sorted_english_reason(english, path) -> Optional[str]:
  """Why the English side cannot pair line by line with the other: tatoeba_preprocess writes
  `xx-en.en` sorted (the other side keeps its order). An aligned file of real sentences is
  essentially never in sorted order, so sorted lines (two or more) mean the download's file."""
  if len(english) >= 2 and all(a <= b for a, b in zip(english, english[1:])):
    return (f"{path} is sorted alphabetically, so its lines do not pair with the other "
            "side's (google-research/xtreme utils_preprocess.tatoeba_preprocess sorts it); read "
            "LASER's aligned tatoeba.{xxx}-eng files with target_source 'original' or 'tfds'")
  return None


def load_tatoeba(data_dir, lang, source=None) -> RetrievalSet:
  """Sentences in lang (queries) against their English translations (candidates)."""
  languages.check_language(lang, languages.TARGET_LANGUAGES["tatoeba"], "tatoeba")
  source = _source(data_dir, "tatoeba", source)
  task = f"xlt_tatoeba_eval_{lang}"
  no_gold = None
  if source == "tfds" and lang in TFDS_TATOEBA_LANGUAGES:
    pairs = _tatoeba_tfds(lang)
    provenance = gold_lib.Provenance("tfds tatoeba", f"tatoeba/tatoeba_{lang}", "train")
  else:
    source = "original" if source == "original" else "files"
    xx_path, en_path = tatoeba_files(data_dir, lang, source)
    pairs = readers.read_aligned_lines(paths.require_file(xx_path, task),
                                       paths.require_file(en_path, task))
    if source == "files":
      no_gold = sorted_english_reason([p[1] for p in pairs], en_path)
    provenance = gold_lib.Provenance(
        DOWNLOAD if source == "files" else "Tatoeba (LASER data/tatoeba/v1)",
        f"{xx_path}, {en_path}", "test", no_gold)
  ids = list(range(len(pairs)))
  gold = [set() if no_gold else {i} for i in ids]
  return RetrievalSet([p[0] for p in pairs], ids, [p[1] for p in pairs], ids, gold, provenance)


def _tatoeba_tfds(lang):
  """(xx sentence, English sentence) pairs of TFDS tatoeba/tatoeba_{lang} (its one split)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def text(value):  # The TFDS builder keeps each line's newline.
    return value.decode("utf-8").rstrip("\r\n")

  ds = tfds.load(f"tatoeba/tatoeba_{lang}", split="train", shuffle_files=False)
  return [(text(ex["source_sentence"]), text(ex["target_sentence"])) for ex in tfds.as_numpy(ds)]


# -- Mewsli-X ----------------------------------------------------------------------------------

MARKER_LEFT, MARKER_RIGHT = "{", "}"
# A marker already in the text becomes a parenthesis, so the mention's markers stay unique.
_MARKED = re.compile(rf"{re.escape(MARKER_LEFT)}(.*?){re.escape(MARKER_RIGHT)}")


def _spans(value, where):
  """Mewsli-X spans are {"start", "end"} objects; [start, end] lists are taken too."""
  out = []
  for span in value:
    if isinstance(span, dict) and "start" in span and "end" in span:
      out.append((int(span["start"]), int(span["end"])))
    elif isinstance(span, (list, tuple)) and len(span) == 2:
      out.append((int(span[0]), int(span[1])))
    else:
      raise KeyError(f"{where}: expected {{start, end}}, got {span!r}")
  return out


def _normalize(text):
  """As the baseline: newlines to spaces, double spaces once to single, stripped."""
  return " ".join(text.splitlines()).replace("  ", " ").strip()


def mention_query(context: dict, span: dict) -> str:
  """The XTREME-R baseline's query (utils_mewslix.preprocess_mention): the mention, then the
  one sentence holding it with the mention between `{ }` markers:
  `Smith: The verdict came back for { Smith }, who stepped down.`"""
  start, end = int(span["start"]), int(span["end"])
  text = context["text"]
  sentence = next(((s, e) for s, e in _spans(context.get("sentence_spans", ()),
                                             "context.sentence_spans")
                   if s <= start < e and s < end <= e), None)
  if sentence is None:
    raise KeyError(f"mention span {start}:{end} lies in no single sentence of sentence_spans")
  mention = span.get("text", text[start:end])
  left = _MARKED.sub(r"(\1)", text[sentence[0]:start])
  right = _MARKED.sub(r"(\1)", text[end:sentence[1]])
  return _normalize(f"{mention}: {left} {MARKER_LEFT} {mention} {MARKER_RIGHT} {right}")


def entity_text(entity: dict) -> str:
  """The baseline's candidate (utils_mewslix.preprocess_entity_description): the description's
  sentences joined by spaces; no title."""
  description = entity.get("description", "")
  spans = _spans(entity.get("sentence_spans", ()), "entity.sentence_spans")
  return _normalize(" ".join(description[s:e] for s, e in spans))


def read_mewslix_mentions(path, language=None):
  """WikiNews articles (one JSON line each, `context` + `mentions`) -> one dict per mention;
  `language` keeps only that context language (the original release holds all in one file)."""
  mentions = []
  for number, record in readers.read_jsonl(path, required=("context", "mentions")):
    context = record["context"]
    if language is not None and context.get("language") != language:
      continue
    for m in record["mentions"]:
      if "entity_id" not in m or "mention_span" not in m:
        raise DataFormatError(path, number, "mention without 'entity_id' or 'mention_span'")
      try:
        query = mention_query(context, m["mention_span"])
      except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(path, number, f"mention {m.get('example_id')!r}: {e}") from None
      mentions.append({"id": str(m.get("example_id", len(mentions))), "query": query,
                       "entity_id": m["entity_id"], "language": context.get("language", "")})
  return mentions


def read_mewslix_pairs(path, training=False):
  """Wikipedia (contextual mention, entity) pairs -> query text and entity description (the
  training pairs; with `training`, an entity without an id or description is an error, as is
  an empty file)."""
  pairs = []
  for number, record in readers.read_jsonl(path, required=("contextual_mention", "entity")):
    cm, entity = record["contextual_mention"], record["entity"]
    try:
      query = mention_query(cm["context"], cm["mention"]["mention_span"])
      pair = {"query": query, "candidate": entity_text(entity), "entity_id": entity["entity_id"]}
    except (KeyError, TypeError, ValueError) as e:
      raise DataFormatError(path, number, f"missing or bad field: {e}") from None
    if training and not (pair["entity_id"] and pair["candidate"]):
      raise DataFormatError(path, number, "the entity has an empty entity_id or description; "
                            "a training pair needs both")
    pairs.append(pair)
  if training and not pairs:
    raise DataFormatError(path, None, "the file holds no pairs (it is empty)")
  return pairs


@functools.lru_cache(maxsize=2)
def read_mewslix_candidates(path):
  """(entity ids, entity texts) of candidate_set_entities.jsonl (about 1M lines; cached)."""
  ids, texts = [], []
  for number, record in readers.read_jsonl(path, required=("entity_id",)):
    try:
      texts.append(entity_text(record))
    except (KeyError, TypeError, ValueError) as e:
      raise DataFormatError(path, number, f"bad field: {e}") from None
    ids.append(record["entity_id"])
  return ids, texts


def load_mewslix(data_dir, lang, split="test", source=None) -> RetrievalSet:
  """WikiNews mentions in lang (queries) against the shared entity candidate set.

  The download's `wikinews_mentions/{split}-{lang}.jsonl` (test entity ids emptied by
  mewslix_preprocess: no gold) or, with source "original", the Mewsli-X release's
  `mewslix/wikinews_mentions-{split}.jsonl` (every language, with entity ids). The candidate
  set is the same file in both; "original" takes the download's when its own dir lacks it.
  """
  languages.check_language(lang, languages.TARGET_LANGUAGES["mewslix"], "mewslix")
  task = f"xlt_mewslix_eval_{lang}"
  source = "original" if _source(data_dir, "mewslix", source) == "original" else "files"
  directory = _dir(data_dir, task, source, "mewslix")
  if source == "original":
    path = paths.require_file(os.path.join(directory, f"wikinews_mentions-{split}.jsonl"), task)
    mentions = read_mewslix_mentions(path, language=lang)
    candidates_path = os.path.join(directory, "candidate_set_entities.jsonl")
    if not os.path.isfile(candidates_path) and paths.xtreme_data_dir():
      candidates_path = os.path.join(paths.xtreme_data_dir(), "mewslix",
                                     "candidate_set_entities.jsonl")
    release = "Mewsli-X release"
  else:
    path = paths.require_file(
        os.path.join(directory, "wikinews_mentions", f"{split}-{lang}.jsonl"), task)
    mentions = read_mewslix_mentions(path)
    candidates_path = os.path.join(directory, "candidate_set_entities.jsonl")
    release = DOWNLOAD
  ids, texts = read_mewslix_candidates(paths.require_file(candidates_path, task))
  no_gold = None
  if mentions and all(not m["entity_id"] for m in mentions):
    no_gold = (f"{path}: every entity_id is empty; the XTREME-R download hides this gold "
               "(google-research/xtreme utils_preprocess.mewslix_preprocess)")
  gold = [{m["entity_id"]} if m["entity_id"] else set() for m in mentions]
  provenance = gold_lib.Provenance(release, f"{path}, {candidates_path}", split, no_gold)
  return RetrievalSet([m["query"] for m in mentions], [m["id"] for m in mentions], list(texts),
                      list(ids), gold, provenance)


# -- LAReQA ------------------------------------------------------------------------------------

def read_xquad_r(path):
  """XQuAD-R JSON -> (questions, candidates) as XTREME-R's LAReQA evaluation reads it
  (utils_lareqa.load_data): every sentence of a paragraph, cut at its `sentence_breaks`, is a
  candidate whose text is the sentence followed by the paragraph (newlines removed); a
  question's answer sentences are those equal to the sentence holding its answer_start.
  Questions whose answer starts in no sentence are skipped, as there (with a warning)."""
  document = readers.read_json(path)
  questions, candidates = [], []
  skipped = 0
  for i, article in enumerate(document.get("data", ())):
    for j, paragraph in enumerate(article.get("paragraphs", ())):
      where = f"data[{i}].paragraphs[{j}]"
      if "context" not in paragraph or "sentence_breaks" not in paragraph:
        raise DataFormatError(path, None, f"{where}: missing field 'context' or 'sentence_breaks'")
      context = paragraph["context"]
      sentences = [context[b:e] for b, e in paragraph["sentence_breaks"]]
      for k, sentence in enumerate(sentences):
        candidates.append(((i, j, k), (sentence + context).replace("\n", "")))
      for qa in paragraph.get("qas", ()):
        if not qa.get("answers"):
          raise DataFormatError(path, None, f"{where}: question {qa.get('id')!r} has no answer")
        start = qa["answers"][0]["answer_start"]
        answer = next((s for (b, e), s in zip(paragraph["sentence_breaks"], sentences)
                       if b <= start < e), None)
        if answer is None:
          skipped += 1
          continue
        questions.append({"id": qa["id"], "question": qa["question"], "paragraph": f"{i}/{j}",
                          "sentences": [(i, j, k) for k, s in enumerate(sentences) if s == answer]})
  if skipped:
    logging.warning("%s: skipped %d questions whose answer starts in no sentence (as XTREME-R's "
                    "LAReQA evaluation does)", path, skipped)
  return questions, candidates


def load_lareqa(data_dir, lang, source=None) -> RetrievalSet:
  """Questions in lang against the candidates of all 11 languages (LAReQA's pool).

  A question's gold set is its answer sentence in every language, so candidate ids are
  `{lang}/{article}/{paragraph}/{sentence}`. XQuAD-R is downloaded as released (with gold), so
  "files" and "original" read the same `lareqa/xquad-r/{lang}.json` layout from their dirs
  ("original" reads the download's when the originals' dir has none).
  """
  valid = languages.TARGET_LANGUAGES["lareqa"]
  languages.check_language(lang, valid, "lareqa")
  task = f"xlt_lareqa_eval_{lang}"
  source = "original" if _source(data_dir, "lareqa", source) == "original" else "files"
  if (source == "original" and data_dir is None and not os.path.isdir(
      os.path.join(paths.original_data_dir() or "", "lareqa", "xquad-r"))):
    source = "files"  # the download's XQuAD-R is the release itself
  directory = _dir(data_dir, task, source, "lareqa", "xquad-r")
  by_lang = {l: read_xquad_r(paths.require_file(os.path.join(directory, f"{l}.json"), task))
             for l in valid}
  candidates, candidate_ids = [], []
  for l in valid:
    for (i, j, k), text in by_lang[l][1]:
      candidates.append(text)
      candidate_ids.append(f"{l}/{i}/{j}/{k}")
  questions = by_lang[lang][0]
  # Parallel files: a question id names the same question in every language.
  sentences_of = {l: {q["id"]: q["sentences"] for q in by_lang[l][0]} for l in valid}
  gold = [{f"{l}/{i}/{j}/{k}" for l in valid for (i, j, k) in sentences_of[l].get(q["id"], ())}
          for q in questions]
  provenance = gold_lib.Provenance(
      DOWNLOAD + " (XQuAD-R as released)" if source == "files" else "XQuAD-R release",
      os.path.join(directory, "{" + ",".join(valid) + "}.json"), "test")
  # The question id is the cross-language item (XQuAD's, hence SQuAD's, id). XQuAD-R is
  # downloaded as released, each paragraph holding its questions, so "article/paragraph"
  # (indices) names the paragraph a question is about.
  return RetrievalSet([q["question"] for q in questions], [q["id"] for q in questions],
                      candidates, candidate_ids, gold, provenance,
                      query_items=[str(q["id"]) for q in questions],
                      query_paragraphs=[q["paragraph"] for q in questions])
