"""Learning-rate schedules: constant, linear warmup, rsqrt decay, cosine; with a step offset.

Each is built from optax's schedules (`constant_schedule`, `linear_schedule`,
`cosine_decay_schedule`, `join_schedules`); rsqrt decay, which optax lacks, is a small schedule
of the same shape (`rsqrt_decay_schedule`).

`step_offset` shifts the schedule for fine-tuning from a pretrained checkpoint whose step count
keeps going (T5X fine-tunes mT5 from step 1,000,000): the schedule sees `step - step_offset`.
"""
import gin
import jax
import jax.numpy as jnp
import optax

from xltransfer.errors import ConfigError

SCHEDULES = ("constant", "linear_warmup", "rsqrt_decay", "cosine")


def rsqrt_decay_schedule(init_value: float, warmup_steps: int) -> optax.Schedule:
  """`init_value / sqrt(max(count, warmup_steps))`: constant during warmup, then rsqrt decay."""
  def schedule(count):
    return init_value * jax.lax.rsqrt(
        jnp.maximum(jnp.asarray(count, jnp.float32), float(warmup_steps)))
  return schedule


def _optax_schedule(name: str, base_learning_rate: float, warmup_steps: int, decay_steps: int,
                    min_learning_rate: float) -> optax.Schedule:
  """The unshifted schedule `name` (arguments checked by `learning_rate_schedule`)."""
  if name == "cosine":
    # From base to min_learning_rate as min + cosine(base - min): optax's `alpha` form
    # (warmup_cosine_decay_schedule's end_value / peak_value) loses min when base is 0.
    decay = optax.cosine_decay_schedule(base_learning_rate - min_learning_rate, decay_steps)
    cosine = lambda count: min_learning_rate + decay(count)  # pylint: disable=unnecessary-lambda-assignment
    if warmup_steps <= 0:
      return cosine
    warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
    return optax.join_schedules([warmup, cosine], [warmup_steps])
  if name == "constant":
    schedule = optax.constant_schedule(base_learning_rate)
  elif name == "linear_warmup":
    schedule = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
  else:
    schedule = rsqrt_decay_schedule(base_learning_rate, warmup_steps)
  # Every schedule but cosine (which ends at it) is floored at min_learning_rate.
  return lambda count: jnp.maximum(schedule(count), min_learning_rate)


@gin.configurable(module="xltransfer.train")
def learning_rate_schedule(name: str = "constant", base_learning_rate: float = 1e-3,
                           warmup_steps: int = 0, decay_steps: int = 0,
                           min_learning_rate: float = 0.0,
                           step_offset: int = 0) -> optax.Schedule:
  """Returns `step -> learning rate` (float32, the shape of `step`).

  constant:       base.
  linear_warmup:  base * min(1, step / warmup_steps), constant afterwards.
  rsqrt_decay:    base / sqrt(max(step, warmup_steps)): the T5 pretraining schedule (base 1.0
                  and 10k warmup steps give 0.01 for the first 10k steps, then decay).
  cosine:         linear warmup, then cosine from base to min_learning_rate over decay_steps.
  All but cosine are floored at min_learning_rate; `step` is max(step - step_offset, 0).
  """
  if name not in SCHEDULES:
    raise ConfigError(f"unknown learning_rate_schedule.name {name!r}; valid: {SCHEDULES}")
  if name in ("linear_warmup", "rsqrt_decay") and warmup_steps <= 0:
    raise ConfigError(f"learning_rate_schedule {name!r} needs warmup_steps > 0")
  if name == "cosine" and decay_steps <= 0:
    raise ConfigError("learning_rate_schedule 'cosine' needs decay_steps > 0")

  def schedule(step):
    # Built here so that this closure holds the arguments as plain values: they are the
    # schedule's record in a run's identity (`run.trajectory_settings`).
    unshifted = _optax_schedule(name, base_learning_rate, warmup_steps, decay_steps,
                                min_learning_rate)
    step = jnp.maximum(jnp.asarray(step, jnp.float32) - step_offset, 0.0)
    return jnp.broadcast_to(jnp.asarray(unshifted(step), jnp.float32), step.shape)

  return schedule
