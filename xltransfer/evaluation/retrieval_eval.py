"""Evaluation by retrieval (Tatoeba, Mewsli-X, LAReQA): queries and candidates of the family's
retrieval set (xltransfer.data.retrieval) are embedded with the mean-pooled encoder, with the
prefixes the dual-encoder training tasks use, and candidates are ranked by cosine similarity
(`xltransfer.evaluation.retrieval`). Tatoeba is searched both ways and scored by accuracy
(`accuracy_en_to_xx` for English to the language); Mewsli-X and LAReQA by mAP@20.

Records: the gold candidate ids and the top-20 ranked ids (Mewsli-X, LAReQA), or sentence
indices (Tatoeba, with `prediction_en_to_xx`).
"""
import dataclasses
from typing import Dict, List, Sequence

import seqio

from xltransfer import metrics as metrics_lib
from xltransfer.data import retrieval as retrieval_data
from xltransfer.errors import ConfigError
from xltransfer.evaluation import examples as examples_lib
from xltransfer.evaluation import inference as inference_lib
from xltransfer.evaluation import retrieval

MAP_K = 20
# family -> (lang, split) -> its RetrievalSet.
RETRIEVAL_SETS = {
    "tatoeba": lambda lang, split: retrieval_data.load_tatoeba(None, lang),
    "mewslix": lambda lang, split: retrieval_data.load_mewslix(
        None, lang, {"validation": "dev"}.get(split, split)),
    "lareqa": lambda lang, split: retrieval_data.load_lareqa(None, lang),
}


def retrieval_set(task, split):
  if task.target not in RETRIEVAL_SETS or task.target not in retrieval_data.PREFIXES:
    raise ConfigError(f"task {task.name} is declared to be evaluated by retrieval, but its "
                      f"family {task.target!r} has no retrieval set; retrieval families: "
                      f"{', '.join(RETRIEVAL_SETS)}")
  return RETRIEVAL_SETS[task.target](task.lang, split)


def _first(rs, keep: int):
  """The retrieval set cut to its first `keep` queries (EvalSettings.max_examples)."""
  rs = dataclasses.replace(rs, queries=rs.queries[:keep], query_ids=rs.query_ids[:keep],
                           gold=rs.gold[:keep])
  for field in ("query_items", "query_paragraphs"):
    if getattr(rs, field) is not None:
      rs = dataclasses.replace(rs, **{field: getattr(rs, field)[:keep]})
  return rs


def _embed_texts(context, texts: Sequence[str], vocabulary, description: str):
  tokens = inference_lib.encode_with_eos(vocabulary, texts,
                                         context.settings.task_feature_lengths["inputs"])
  return retrieval.embed(context.runner, tokens, context.settings.retrieval_layer, description)


def predict(context, task, split):
  """(provenance, no_gold, records) of a retrieval task."""
  settings = context.settings
  rs = retrieval_set(task, split)
  # Retrieval sets that know their source carry it (xltransfer/data/retrieval.py).
  provenance = getattr(rs, "provenance", None)
  tatoeba = task.target == "tatoeba"
  if settings.max_examples:
    rs = _first(rs, settings.max_examples)
    if tatoeba:  # Aligned pairs: keep both sides in step.
      rs = dataclasses.replace(rs, candidates=rs.candidates[:settings.max_examples],
                               candidate_ids=rs.candidate_ids[:settings.max_examples])
  no_gold = examples_lib.check_gold(context, task, split, provenance, rs.gold)
  feature = seqio.get_mixture_or_task(task.name).output_features["inputs"]
  vocabulary = feature.vocabulary
  # The training tasks' prefixes: evaluation embeds what a dual encoder was trained on.
  query_prefix, candidate_prefix = retrieval_data.PREFIXES[task.target]
  query_texts = [query_prefix + q for q in rs.queries]
  queries = _embed_texts(context, query_texts, vocabulary, f"{task.name} queries")
  # Queries cut at the input length (candidates are not counted: a pool shared by languages).
  cut = [{"input_truncated": True} if examples_lib.input_was_truncated(
      feature, text, settings.task_feature_lengths["inputs"]) else {} for text in query_texts]
  # Mewsli-X and LAReQA share one candidate pool across languages: embed it once.
  key = ("retrieval candidates", task.target, len(rs.candidate_ids), rs.candidate_ids[0],
         rs.candidate_ids[-1])
  if tatoeba or key not in context.cache:
    context.cache[key] = _embed_texts(context, [candidate_prefix + c for c in rs.candidates],
                                      vocabulary, f"{task.name} candidates")
  candidates = context.cache[key]
  search = dict(candidate_chunk=settings.candidate_chunk, query_batch=settings.batch_size)
  labelled = no_gold is None
  if tatoeba:
    forward, backward = retrieval.tatoeba_directions(queries, candidates, **search)
    return provenance, no_gold, [
        {"id": str(qid), "input": q, "target": int(min(g)) if labelled else None,
         "prediction": int(rs.candidate_ids[f]),
         "prediction_en_to_xx": int(rs.query_ids[b]),
         "example_score": 100.0 * (int(rs.candidate_ids[f]) in g) if labelled else None,
         **flags}
        for qid, q, g, f, b, flags in zip(rs.query_ids, rs.queries, rs.gold, forward, backward,
                                          cut)]
  _, indices = retrieval.cosine_top_k(queries, candidates, MAP_K, **search)
  clusters = [examples_lib.cluster_fields({"item": item, "paragraph": paragraph})
              for item, paragraph in zip(rs.query_items or [""] * len(rs.queries),
                                         rs.query_paragraphs or [""] * len(rs.queries))]
  records = []
  for qid, q, g, row, cluster, flags in zip(rs.query_ids, rs.queries, rs.gold, indices,
                                            clusters, cut):
    ranked = [rs.candidate_ids[j] for j in row]
    score = (100.0 * metrics_lib.average_precision_at_k(g, ranked, MAP_K) if labelled
             else None)
    records.append({"id": str(qid), **cluster, "input": q,
                    "target": sorted(g) if labelled else None,
                    "prediction": ranked, "example_score": score, **flags})
  return provenance, no_gold, records


def retrieval_metrics(target: str, records: List[dict]) -> Dict[str, float]:
  if not records:
    return {}
  if target == "tatoeba":
    gold = [r["target"] for r in records]
    scores = metrics_lib.accuracy(gold, [r["prediction"] for r in records])
    scores["accuracy_en_to_xx"] = metrics_lib.accuracy(
        gold, [r["prediction_en_to_xx"] for r in records])["accuracy"]
    return scores
  return metrics_lib.map_at_k([r["target"] for r in records],
                              [r["prediction"] for r in records], k=MAP_K)


WAY = examples_lib.Way(predict=predict,
                       metrics=lambda task, records: retrieval_metrics(task.target, records))
