"""A dual encoder on the mT5 encoder, trained contrastively with in-batch negatives.

For the retrieval targets with training data (Mewsli-X, LAReQA): a query and its candidate
are each embedded as the mean of the encoder's outputs over their non-padding tokens (one
shared encoder, as in XTREME-R's mT5 baselines); L2-normalised embeddings are compared by dot
product divided by a temperature; every other candidate in the batch is a negative, so the
loss is a softmax cross entropy over the batch with the diagonal as the labels.

Batch features are what `xltransfer.train.feature_converters.DualEncoderFeatureConverter`
makes of the retrieval training tasks (`xlt_mewslix_train`, `xlt_lareqa_train`: `inputs` =
query text, `targets` = candidate text): `query_tokens` [b, inputs length] and
`candidate_tokens` [b, targets length], one (query, positive candidate) pair per row, never
packed. All-zero rows (padding of the last eval batch) are neither examples nor negatives.

The model holds only what it uses: the shared token embedding and the encoder, under the
encoder-decoder's (T5X) names; mean pooling has no parameters. An mT5 checkpoint (ours, T5X or
HF) loads with its decoder dropped (`dropped_subtrees`), so neither the parameters nor the
optimizer state carry a decoder. A trained dual encoder is evaluated by `xltransfer eval` with
models/dual_encoder.gin after the model file (retrieval reads the encoder only); it cannot
decode. With microbatches the negatives come from the microbatch.
"""
import jax
import jax.numpy as jnp

from xltransfer.errors import ConfigError
from xltransfer.model import losses
from xltransfer.model.config import MT5Config
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.model.network import Transformer

QUERY_FEATURE = "query_tokens"
CANDIDATE_FEATURE = "candidate_tokens"
# Logit of a padding column: far below any cosine / temperature, finite so 0 * it stays 0.
_MASKED = -1e9


def in_batch_negatives_loss(queries, candidates, real, temperature: float,
                            symmetric: bool = False):
  """Contrastive loss of L2-normalised query and candidate embeddings [b, d].

  Row i's label is candidate i; the other real candidates of the batch are its negatives.
  `real` [b] marks the rows that are pairs (padding rows count for nothing).
  Returns (mean loss over real pairs, number of rows whose best candidate is their own,
  number of real pairs).
  """
  logits = (queries @ candidates.T) / temperature
  labels = jnp.arange(logits.shape[0])

  def cross_entropy(scores):
    scores = jnp.where(real[None, :], scores, _MASKED)
    logprobs = jax.nn.log_softmax(scores, axis=-1)
    return -jnp.take_along_axis(logprobs, labels[:, None], axis=-1)[:, 0]

  per_pair = cross_entropy(logits)
  if symmetric:
    per_pair = 0.5 * (per_pair + cross_entropy(logits.T))
  weights = real.astype(jnp.float32)
  num_pairs = jnp.sum(weights)
  loss = jnp.sum(per_pair * weights) / jnp.maximum(num_pairs, 1.0)
  masked = jnp.where(real[None, :], logits, _MASKED)
  correct = jnp.sum((jnp.argmax(masked, axis=-1) == labels).astype(jnp.float32) * weights)
  return loss, correct, num_pairs


class DualEncoderModel(EncoderDecoderModel):
  """`loss_fn(params, batch, dropout_rng)` like `EncoderDecoderModel`, contrastive.

  Args:
    config: the mT5 network config.
    temperature: softmax temperature on cosine similarities.
    symmetric: also score each candidate against the batch's queries, averaging both losses.
  """

  kind = "dual_encoder"
  dropped_subtrees = ("decoder",)
  token_id_features = (QUERY_FEATURE, CANDIDATE_FEATURE)

  def __init__(self, config: MT5Config, temperature: float = 0.05, symmetric: bool = False):
    if not temperature > 0:
      raise ConfigError(f"dual encoder temperature must be positive, got {temperature!r}")
    # The loss is a mean over pairs; NUM_REAL_TARGET_TOKENS with num_tokens = pairs makes the
    # trainer's loss sums and microbatch weights count pairs.
    super().__init__(config, z_loss=0.0, loss_normalizing_factor=losses.NUM_REAL_TARGET_TOKENS)
    self.temperature = float(temperature)
    self.symmetric = bool(symmetric)

  # ---- parameters: the token embedding and the encoder ----

  def _init_boxed(self, rng, input_length=8, target_length=8):
    del target_length  # No decoder.
    tokens = jnp.ones((1, input_length), jnp.int32)
    return self.module.init(rng, tokens, method=Transformer.encode)["params"]

  # ---- what needs a decoder ----

  def _no_decoder(self, what: str):
    raise ConfigError(f"the dual encoder has no decoder, so it cannot {what}: it embeds "
                      "(retrieval targets: mewslix, lareqa, tatoeba); evaluate generation and "
                      "classification tasks with a seq2seq model (without models/dual_encoder.gin)")

  def logits(self, params, batch, dropout_rng=None):
    self._no_decoder("compute decoder logits or score targets")

  def decoding_weights(self, params):
    self._no_decoder("decode")

  def greedy_decode(self, params, encoder_input_tokens, max_decode_length: int):
    self._no_decoder("decode")

  def beam_search(self, params, encoder_input_tokens, max_decode_length: int, beam_size: int,
                  alpha: float = 0.6):
    self._no_decoder("decode")

  # ---- training ----

  def embed(self, params, tokens, dropout_rng=None):
    """L2-normalised mean-pooled encoder output: [b, embed] float32."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    encoded = self.module.apply({"params": params}, tokens, enable_dropout=dropout_rng is not None,
                                rngs=rngs, method=Transformer.encode).astype(jnp.float32)
    mask = (tokens > 0).astype(jnp.float32)[..., None]
    pooled = jnp.sum(encoded * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  def pair_tokens(self, batch):
    """(query tokens, candidate tokens) of a batch; ConfigError for any other kind of batch."""
    if "encoder_segment_ids" in batch or "decoder_segment_ids" in batch:
      raise ConfigError("the dual encoder needs unpacked (query, candidate) batches: set "
                        "DatasetConfig.pack = False (gin/models/dual_encoder.gin does)")
    missing = [k for k in (QUERY_FEATURE, CANDIDATE_FEATURE) if k not in batch]
    if missing:
      raise ConfigError(
          f"the dual encoder's batch has no {' or '.join(missing)} (it has {sorted(batch)}): "
          "set DatasetConfig.feature_converter = 'dual_encoder' (gin/models/dual_encoder.gin, "
          "loaded after the model and run files, does)")
    return batch[QUERY_FEATURE], batch[CANDIDATE_FEATURE]

  def row_loss_weights(self, batch):
    """[b] float32: 1 for each real pair, 0 for padding rows (what the loss averages over)."""
    queries, candidates = self.pair_tokens(batch)
    return (jnp.any(queries > 0, axis=-1) & jnp.any(candidates > 0, axis=-1)).astype(jnp.float32)

  def _embed_pairs(self, params, batch, dropout_rng):
    queries, candidates = self.pair_tokens(batch)
    query_rng = candidate_rng = None
    if dropout_rng is not None:
      query_rng, candidate_rng = jax.random.split(dropout_rng)
    q = self.embed(params, queries, query_rng)
    c = self.embed(params, candidates, candidate_rng)
    return q, c, self.row_loss_weights(batch) > 0

  def loss_fn(self, params, batch, dropout_rng=None):
    """In-batch-negatives softmax loss, averaged over the real pairs, and summed metrics."""
    q, c, real = self._embed_pairs(params, batch, dropout_rng)
    loss, correct, num_pairs = in_batch_negatives_loss(q, c, real, self.temperature,
                                                       self.symmetric)
    metrics = {
        "loss": loss,
        "z_loss": jnp.zeros((), jnp.float32),
        "cross_ent_loss": loss,
        "accuracy_correct": correct,
        # Pairs stand in for tokens: the trainer's sums and accuracy are then per pair.
        "num_tokens": num_pairs,
        "num_examples": num_pairs,
    }
    metrics["accuracy"] = correct / jnp.maximum(num_pairs, 1.0)
    return loss, metrics
