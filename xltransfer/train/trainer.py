"""The partitioned train and eval steps.

`Trainer` jits one training step with explicit in/out shardings and the state donated, so the
parameters and optimizer state are updated in place on every device. Gradients can be
accumulated over microbatches; each step draws its dropout rng from the step number, so a
resumed run reproduces an uninterrupted one bit for bit.
"""
from typing import Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xltransfer.errors import ConfigError
from xltransfer.model.layers import target_platform
from xltransfer.model.losses import NUM_REAL_TARGET_TOKENS
from xltransfer.train import row_sparse
from xltransfer.train import state as state_lib
from xltransfer.train.state import TrainState

# Per-step metrics that are sums over the batch; the rest are batch-level values.
SUMMED_METRICS = ("num_tokens", "num_examples", "accuracy_correct")


def unnormalized_loss(loss, num_tokens, factor):
  """Undoes the model's loss normalisation: the summed token loss of the batch."""
  if factor is None:
    return loss
  if factor == NUM_REAL_TARGET_TOKENS:
    return loss * jnp.maximum(num_tokens, 1.0)
  return loss * float(factor)


def to_host(tree):
  """Host copies of (replicated) arrays; works when the arrays span several processes."""
  def one(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_data(0))
    return x
  return jax.tree.map(one, tree)


class Trainer:
  """Train/eval steps of one model on one mesh."""

  def __init__(self, model, optimizer, partitioner, num_microbatches: int = 1,
               dropout_seed: int = 0, row_sparse_embedding: Optional[bool] = None):
    """`row_sparse_embedding`: differentiate and update only the token embedding's rows that
    a batch looks up (`row_sparse.py`; the same update as the dense one). None: where it pays,
    for a CPU target; True where the model and optimizer allow it, else a ConfigError."""
    if num_microbatches < 1:
      raise ConfigError(f"num_microbatches must be >= 1, got {num_microbatches}")
    self.model = model
    self.optimizer = optimizer
    self.partitioner = partitioner
    self.num_microbatches = num_microbatches
    self.dropout_seed = dropout_seed
    self.row_sparse_embedding = row_sparse_embedding
    if row_sparse_embedding:
      path, reason = self._row_sparse_path()
      if path is None:
        raise ConfigError(f"row_sparse_embedding=True, but {reason}")
    self.abstract_state = state_lib.abstract_train_state(model, optimizer)
    self.state_shardings = state_lib.train_state_shardings(partitioner, model, optimizer,
                                                           self.abstract_state)
    batch_sharding = partitioner.batch_sharding(2)
    replicated = partitioner.replicated()
    self._train_step = jax.jit(self._step, in_shardings=(self.state_shardings, batch_sharding),
                               out_shardings=(self.state_shardings, replicated),
                               donate_argnums=(0,))
    self._eval_step = jax.jit(self._eval, in_shardings=(self.state_shardings.params,
                                                        batch_sharding),
                              out_shardings=replicated)
    self._init_state = jax.jit(self._init, out_shardings=self.state_shardings)

  # ---- state ----

  def _init(self, rng):
    return TrainState.create(self.model.init(rng), self.optimizer)

  def init_state(self, seed: int = 0) -> TrainState:
    """Randomly initialised state, created directly in its shardings."""
    with self.partitioner.activation_context():
      return self._init_state(jax.random.PRNGKey(seed))

  def state_from_params(self, params) -> TrainState:
    """A fresh state (step 0, new optimizer state) around given, already sharded params."""
    init_opt = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)
    step = jax.device_put(np.int32(0), self.state_shardings.step)
    return TrainState(step=step, params=params, opt_state=init_opt(params))

  def state_from_restored(self, params, opt_state, step: int) -> TrainState:
    """The state around already sharded params and optimizer state restored at `step`."""
    return TrainState(step=jax.device_put(np.int32(step), self.state_shardings.step),
                      params=params, opt_state=opt_state)

  def sharded_abstract_state(self) -> TrainState:
    """The state as `jax.ShapeDtypeStruct`s that carry their shardings (nothing allocated)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)

  def abstract_batch(self, batch_size: int,
                     feature_lengths: Mapping[str, int]) -> Dict[str, jax.ShapeDtypeStruct]:
    """A global int32 batch of the model's features (name -> length), sharded as `train_step`
    expects it; the batch must split evenly over the data-parallel shards and microbatches."""
    shards = self.partitioner.data_parallel_size()
    if batch_size % (shards * self.num_microbatches):
      raise ConfigError(f"BATCH_SIZE {batch_size} must be a multiple of the {shards} "
                        f"data-parallel shards × {self.num_microbatches} microbatches")
    sharding = self.partitioner.batch_sharding(2)
    return {name: jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=sharding)
            for name, length in feature_lengths.items()}

  # ---- steps ----

  def lower_train_step(self, abstract_state: Optional[TrainState],
                       abstract_batch: Mapping[str, jax.ShapeDtypeStruct]) -> jax.stages.Lowered:
    """Lowers the jitted `train_step` itself (its shardings, the state donated) for abstract
    inputs, ahead of time: `.compile()` on the result gives XLA's memory and cost analyses
    for the target devices without running anything. `abstract_state` None means this
    trainer's own (`sharded_abstract_state()`)."""
    state = self.sharded_abstract_state() if abstract_state is None else abstract_state
    with self.partitioner.activation_context():
      return self._train_step.lower(state, dict(abstract_batch))

  def train_step(self, state: TrainState, batch: Dict[str, jax.Array]):
    """One optimizer step on a global batch; `state` is donated (do not reuse it)."""
    with self.partitioner.activation_context():
      return self._train_step(state, batch)

  def eval_step(self, params, batch: Dict[str, jax.Array]):
    with self.partitioner.activation_context():
      return self._eval_step(params, batch)

  def _microbatch_weights(self, tokens_per_micro):
    # NUM_REAL_TARGET_TOKENS normalises each microbatch by its own token count; weighting by
    # its share of the batch's tokens makes the sum equal the full-batch normalised loss.
    if self.model.loss_normalizing_factor == NUM_REAL_TARGET_TOKENS:
      return tokens_per_micro / jnp.maximum(jnp.sum(tokens_per_micro), 1.0)
    return jnp.ones_like(tokens_per_micro)

  def _row_sparse_path(self):
    """(the token embedding's param path, None) where its gradient can be row-sparse, else
    (None, why not)."""
    path_of = getattr(self.model, "row_sparse_embedding_path", None)
    path = path_of() if path_of is not None else None
    if path is None:
      return None, ("the model's loss reads every row of its token embedding (tied logits: "
                    "logits_via_embedding)")
    if self.optimizer.has_momentum:
      return None, "the optimizer's momentum moves embedding rows of zero gradient too"
    if not self.optimizer.accepts_row_sparse(path):
      return None, (f"the optimizer does not keep a factored second moment for {'/'.join(path)}"
                    " (factored=False, or a dimension under min_dim_size_to_factor)")
    return path, None

  def _looked_up_rows(self, params, batch) -> Optional[row_sparse.LookedUpRows]:
    """Which embedding rows this step differentiates, or None for the whole table. Decided
    at trace time: on a CPU the dense gradient costs passes over an array of mostly zeros
    (512 MB for mT5), measured at ~0.13 s of mT5-small's 2.7 s step; TPU and GPU targets,
    where it is not measured and the table is sharded, keep the dense gradient."""
    use = self.row_sparse_embedding
    if use is None:
      use = target_platform() == "cpu"
    path = self._row_sparse_path()[0] if use else None
    if path is None:
      return None
    return row_sparse.LookedUpRows.collect(path, params, batch, self.model.token_id_features)

  def _grads(self, loss_fn, params, batch, rng):
    """Gradients of `loss_fn` with respect to `params` (summed over microbatches)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    m = self.num_microbatches
    if m == 1:
      (_, metrics), grads = grad_fn(params, batch, rng)
      return grads, metrics
    batch_size = next(iter(batch.values())).shape[0]
    if batch_size % m:
      raise ConfigError(f"batch size {batch_size} is not divisible by num_microbatches {m}")
    # Microbatch i takes rows i, i+m, i+2m, ...: every device keeps an equal share of each
    # microbatch, so no rows move between devices.
    micro = {k: jnp.swapaxes(v.reshape((batch_size // m, m) + v.shape[1:]), 0, 1)
             for k, v in batch.items()}
    micro = {k: jax.lax.with_sharding_constraint(
        v, self.partitioner.sharding(jax.sharding.PartitionSpec(None, "batch")))
             for k, v in micro.items()}
    # What each microbatch's loss is normalised by: target tokens (pairs for a dual encoder).
    tokens = jnp.sum(jax.vmap(self.model.row_loss_weights)(micro), axis=-1)
    scale = self._microbatch_weights(tokens)

    def body(carry, inputs):
      grad_sum, metric_sum = carry
      index, mb, w = inputs
      (_, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, index))
      grad_sum = jax.tree.map(lambda a, g: a + w * g, grad_sum, grads)
      scaled = {k: (v if k in SUMMED_METRICS else w * v) for k, v in metrics.items()
                if k != "accuracy"}
      metric_sum = jax.tree.map(jnp.add, metric_sum, scaled)
      return (grad_sum, metric_sum), None

    zero_grads = jax.tree.map(jnp.zeros_like, params)
    first = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda v: v[0], micro), rng))
    zero_metrics = {k: jnp.zeros(v.shape, v.dtype) for k, v in first[0][1].items()
                    if k != "accuracy"}
    (grads, metrics), _ = jax.lax.scan(body, (zero_grads, zero_metrics),
                                       (jnp.arange(m), micro, scale))
    metrics = dict(metrics)
    metrics["accuracy"] = metrics["accuracy_correct"] / jnp.maximum(metrics["num_tokens"], 1.0)
    return grads, metrics

  def _step(self, state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(self.dropout_seed), state.step)
    looked_up = self._looked_up_rows(state.params, batch)
    if looked_up is None:
      grads, metrics = self._grads(self.model.loss_fn, state.params, batch, rng)
      row_ids = None
    else:
      # The gradient holds the looked-up rows of the embedding (exactly the table's nonzero
      # rows), so its norm below is the whole table's.
      grads, metrics = self._grads(looked_up.loss_fn(self.model.loss_fn, state.params),
                                   looked_up.trainable(state.params), batch, rng)
      row_ids = looked_up.row_ids(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params, row_ids)
    params = row_sparse.apply_updates(state.params, updates, row_ids)
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = jnp.asarray(self.optimizer.learning_rate(state.step), jnp.float32)
    # Summed token loss, whatever the normalisation: per-token loss = this / num_tokens.
    metrics["loss_sum"] = unnormalized_loss(metrics["loss"], metrics["num_tokens"],
                                            self.model.loss_normalizing_factor)
    metrics["finite"] = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval(self, params, batch):
    loss, metrics = self.model.loss_fn(params, batch)
    return {
        "loss_sum": unnormalized_loss(loss, metrics["num_tokens"],
                                      self.model.loss_normalizing_factor),
        "z_loss_sum": unnormalized_loss(metrics["z_loss"], metrics["num_tokens"],
                                        self.model.loss_normalizing_factor),
        "accuracy_correct": metrics["accuracy_correct"],
        "num_tokens": metrics["num_tokens"],
        "num_examples": metrics["num_examples"],
    }

  def evaluate(self, params, host_batches, global_batch_size: int) -> Dict[str, float]:
    """Teacher-forced per-token loss and accuracy over the given host batches."""
    from xltransfer.train.input import to_global_batch  # pylint: disable=import-outside-toplevel
    totals: Dict[str, float] = {}
    for host_batch in host_batches:
      out = to_host(self.eval_step(
          params, to_global_batch(host_batch, self.partitioner, global_batch_size)))
      for k, v in out.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    tokens = max(totals.get("num_tokens", 0.0), 1.0)
    return {
        "loss": totals.get("loss_sum", 0.0) / tokens,
        "cross_ent_loss": (totals.get("loss_sum", 0.0) - totals.get("z_loss_sum", 0.0)) / tokens,
        "accuracy": totals.get("accuracy_correct", 0.0) / tokens,
        "num_tokens": totals.get("num_tokens", 0.0),
        "num_examples": totals.get("num_examples", 0.0),
    }
