"""Query and candidate sets of the XTREME-R retrieval targets, for the evaluator.

    rs = load_tatoeba(data_dir, "de")     # or load_mewslix(data_dir, "ja", "test"),
                                          #    load_lareqa(data_dir, "el")
    rs.queries[i], rs.query_ids[i]        # texts to encode with the query side
    rs.candidates[j], rs.candidate_ids[j] # texts to encode with the candidate side
    rs.gold[i]                            # set of candidate ids that answer query i

Tatoeba scores accuracy of the nearest neighbour (xx -> en); Mewsli-X and LAReQA score
mAP@20 (`xltransfer.evaluation.metrics.map_at_k(rs.gold, ranked_candidate_ids)`).
`data_dir=None` uses the XTREME-R data dir from gin or $XTREME_DATA_DIR; for Tatoeba it reads
TFDS `tatoeba/tatoeba_{lang}` instead when gin `target_source.value` is "tfds" and TFDS has
the language.
"""
import dataclasses
import functools
import os

from xltransfer.data import languages, paths, readers
from xltransfer.errors import DataFormatError


# Text prefixes of (query, candidate) per retrieval target: the training tasks format their
# pairs with them (xltransfer/tasks/targets.py) and the evaluator embeds with them, so that
# evaluation embeds what a dual encoder was trained on.
PREFIXES = {"tatoeba": ("sentence: ", "sentence: "),
            "mewslix": ("mention: ", "entity: "),
            "lareqa": ("question: ", "answer: ")}


@dataclasses.dataclass
class RetrievalSet:
  queries: list
  query_ids: list
  candidates: list
  candidate_ids: list
  gold: list  # list of sets of candidate ids, one per query


def _dir(data_dir, task, *parts):
  how = f"pass data_dir, set ${paths.XTREME_ENV_VAR} or gin `xtreme_data_dir.path`"
  return paths.require_dir(data_dir or paths.xtreme_data_dir(), how, task, *parts)


# TFDS tatoeba has XTREME's 36 languages; XTREME-R's additions (lt ms pl ro uk) are files only.
TFDS_TATOEBA_LANGUAGES = frozenset(
    "af ar bg bn de el es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr nl pt ru sw ta te "
    "th tl tr ur vi zh".split())


def tatoeba_files(data_dir, lang):
  directory = _dir(data_dir, "xlt_tatoeba", "tatoeba")
  return (os.path.join(directory, f"{lang}-en.{lang}"), os.path.join(directory, f"{lang}-en.en"))


def load_tatoeba(data_dir, lang) -> RetrievalSet:
  """Sentences in lang (queries) against their English translations (candidates)."""
  languages.check_language(lang, languages.TARGET_LANGUAGES["tatoeba"], "tatoeba")
  if data_dir is None and paths.target_source() == "tfds" and lang in TFDS_TATOEBA_LANGUAGES:
    pairs = _tatoeba_tfds(lang)
  else:
    xx_path, en_path = tatoeba_files(data_dir, lang)
    pairs = readers.read_aligned_lines(paths.require_file(xx_path, f"xlt_tatoeba_eval_{lang}"),
                                       paths.require_file(en_path, f"xlt_tatoeba_eval_{lang}"))
  ids = list(range(len(pairs)))
  return RetrievalSet([p[0] for p in pairs], ids, [p[1] for p in pairs], ids, [{i} for i in ids])


def _tatoeba_tfds(lang):
  """(xx sentence, English sentence) pairs of TFDS tatoeba/tatoeba_{lang} (its one split)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def text(value):  # The TFDS builder keeps each line's newline.
    return value.decode("utf-8").rstrip("\r\n")

  ds = tfds.load(f"tatoeba/tatoeba_{lang}", split="train", shuffle_files=False)
  return [(text(ex["source_sentence"]), text(ex["target_sentence"])) for ex in tfds.as_numpy(ds)]


# -- Mewsli-X ----------------------------------------------------------------------------------

def mention_text(context: str, span: dict, window: int = 256) -> str:
  """A mention in its context, marked with brackets, cut to about `window` chars each side."""
  start, end = int(span["start"]), int(span["end"])
  left = context[max(0, start - window):start]
  right = context[end:end + window]
  return f"{left}[{context[start:end] or span.get('text', '')}]{right}".strip()


def read_mewslix_mentions(path):
  """WikiNews articles (one JSON line each, `context` + `mentions`) -> one dict per mention."""
  mentions = []
  for number, record in readers.read_jsonl(path, required=("context", "mentions")):
    context = record["context"]
    text = context.get("text", "")
    for m in record["mentions"]:
      if "entity_id" not in m or "mention_span" not in m:
        raise DataFormatError(path, number, "mention without 'entity_id' or 'mention_span'")
      mentions.append({"id": str(m.get("example_id", len(mentions))),
                       "query": mention_text(text, m["mention_span"]),
                       "entity_id": m["entity_id"], "language": context.get("language", "")})
  return mentions


def read_mewslix_pairs(path):
  """Wikipedia (contextual mention, entity) pairs -> query text and entity description."""
  pairs = []
  for number, record in readers.read_jsonl(path, required=("contextual_mention", "entity")):
    cm, entity = record["contextual_mention"], record["entity"]
    try:
      query = mention_text(cm["context"]["text"], cm["mention"]["mention_span"])
      pairs.append({"query": query, "candidate": entity_text(entity),
                    "entity_id": entity["entity_id"]})
    except (KeyError, TypeError) as e:
      raise DataFormatError(path, number, f"missing field {e}") from None
  return pairs


def entity_text(entity: dict) -> str:
  return f"{entity.get('title', '')}: {entity.get('description', '')}".strip(": ")


@functools.lru_cache(maxsize=2)
def read_mewslix_candidates(path):
  """(entity ids, entity texts) of candidate_set_entities.jsonl (about 1M lines; cached)."""
  ids, texts = [], []
  for _, record in readers.read_jsonl(path, required=("entity_id",)):
    ids.append(record["entity_id"])
    texts.append(entity_text(record))
  return ids, texts


def load_mewslix(data_dir, lang, split="test") -> RetrievalSet:
  """WikiNews mentions in lang (queries) against the shared entity candidate set."""
  languages.check_language(lang, languages.TARGET_LANGUAGES["mewslix"], "mewslix")
  task = f"xlt_mewslix_eval_{lang}"
  directory = _dir(data_dir, task, "mewslix")
  mentions = read_mewslix_mentions(paths.require_file(
      os.path.join(directory, "wikinews_mentions", f"{split}-{lang}.jsonl"), task))
  ids, texts = read_mewslix_candidates(paths.require_file(
      os.path.join(directory, "candidate_set_entities.jsonl"), task))
  return RetrievalSet([m["query"] for m in mentions], [m["id"] for m in mentions], list(texts),
                      list(ids), [{m["entity_id"]} for m in mentions])


# -- LAReQA ------------------------------------------------------------------------------------

def read_xquad_r(path):
  """XQuAD-R JSON: questions with the index of their answer sentence in each paragraph."""
  document = readers.read_json(path)
  questions, sentences = [], []
  for i, article in enumerate(document.get("data", ())):
    for j, paragraph in enumerate(article.get("paragraphs", ())):
      where = f"data[{i}].paragraphs[{j}]"
      if "sentences" not in paragraph or "sentence_breaks" not in paragraph:
        raise DataFormatError(path, None, f"{where}: missing field 'sentences' or 'sentence_breaks'")
      for k, sentence in enumerate(paragraph["sentences"]):
        sentences.append(((i, j, k), sentence))
      for qa in paragraph.get("qas", ()):
        if not qa.get("answers"):
          raise DataFormatError(path, None, f"{where}: question {qa.get('id')!r} has no answer")
        start = qa["answers"][0]["answer_start"]
        k = next((k for k, (b, e) in enumerate(paragraph["sentence_breaks"]) if b <= start < e),
                 None)
        if k is None:
          raise DataFormatError(path, None, f"{where}: answer of {qa['id']!r} is in no sentence")
        questions.append({"id": qa["id"], "question": qa["question"], "sentence": (i, j, k),
                          "answer_sentence": paragraph["sentences"][k]})
  return questions, sentences


def load_lareqa(data_dir, lang) -> RetrievalSet:
  """Questions in lang against the answer sentences of all 11 languages (LAReQA's pool).

  A question's gold set is its answer sentence in every language, so candidate ids are
  `{lang}/{article}/{paragraph}/{sentence}`.
  """
  valid = languages.TARGET_LANGUAGES["lareqa"]
  languages.check_language(lang, valid, "lareqa")
  task = f"xlt_lareqa_eval_{lang}"
  directory = _dir(data_dir, task, "lareqa", "xquad-r")
  by_lang = {l: read_xquad_r(paths.require_file(os.path.join(directory, f"{l}.json"), task))
             for l in valid}
  candidates, candidate_ids = [], []
  for l in valid:
    for (i, j, k), sentence in by_lang[l][1]:
      candidates.append(sentence)
      candidate_ids.append(f"{l}/{i}/{j}/{k}")
  questions = by_lang[lang][0]
  # Parallel files: a question id names the same question in every language.
  sentence_of = {l: {q["id"]: q["sentence"] for q in by_lang[l][0]} for l in valid}
  gold = [{f"{l}/{'/'.join(map(str, sentence_of[l][q['id']]))}" for l in valid
           if q["id"] in sentence_of[l]} for q in questions]
  return RetrievalSet([q["question"] for q in questions], [q["id"] for q in questions],
                      candidates, candidate_ids, gold)
