"""Cost of the array digests on a trainer checkpoint save, side by side in one process.

Builds the train state of a model size (default mT5-small: parameters and Adafactor state,
float32, random init, as `xltransfer.train` builds it) and saves a fresh copy of it (new
arrays, as after a train step: a jax array caches its host copy, so saving the same arrays
again would skip orbax's copy to the host) repeatedly into two run directories, alternating
the order:
  with digests      `CheckpointManager.save`, as the trainer saves (digests computed on the
                    devices, started after orbax's copy to the host, written as the
                    checkpoint's `digests` item)
  without digests   the same orbax save of the same four items, without the `digests` item
                    (what `CheckpointManager.save` did before digests existed)
For each it prints the time the training loop is blocked in `save()` and the time until the
checkpoint is complete on disk (`wait_until_finished`), median over the repetitions after a
warm-up save each (which compiles the digest computation), and their ratio; the same for the
minimum, as the other jobs on a shared machine only add time. Also the time of
the digest computation alone (computed and brought to the host). On a shared machine the
times of single saves vary by tens of percent: use enough repetitions.

Measured on a 2-core CPU shared with other jobs (load 3; mT5-small, 1.12 GiB, 7 repetitions):
blocked median 0.186 s with digests vs 0.191 s without (minimum 0.170 vs 0.127 s), complete
median 1.94 s vs 2.57 s (minimum 1.61 vs 1.40 s), single saves of one kind spreading over
1.4-4.3 s: the digests' cost is below this noise; the digests alone take 0.076 s. Before the
digests were summed in rows of 32 and started after orbax's copy to the host (digests.py),
saving the same arrays each time: blocked 0.61 vs 0.17 s, complete 6.64 vs 5.94 s (1.12x).

  python benchmarks/checkpoint_digest.py                      # mT5-small, 7 repetitions
  python benchmarks/checkpoint_digest.py --size tiny --repeats 2
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time


def _args():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="small")
  parser.add_argument("--repeats", type=int, default=7, help="timed saves of each kind")
  parser.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
  parser.add_argument("--sync", action="store_true", help="synchronous saves (async_save=False)")
  return parser.parse_args()


def main():
  args = _args()
  import jax
  import jax.numpy as jnp
  import numpy as np
  import orbax.checkpoint as ocp

  from xltransfer.checkpoints import digests
  from xltransfer.model.config import get_config
  from xltransfer.model.models import EncoderDecoderModel
  from xltransfer.train import checkpointing
  from xltransfer.train import optimizer as optimizer_lib
  from xltransfer.train.run import build_trainer
  from xltransfer.train.state import TrainState

  model = EncoderDecoderModel(get_config(args.size, dtype="float32"))
  trainer = build_trainer(model)
  state = trainer.init_state(0)
  jax.block_until_ready(state)
  leaves = jax.tree.leaves(state)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  n_state = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.opt_state))
  total_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
  print(f"mT5 {args.size}: {n_params / 1e6:.1f}M parameters + {n_state / 1e6:.1f}M Adafactor "
        f"state elements, {len(leaves)} arrays, {total_bytes / 2**30:.2f} GiB; "
        f"{jax.device_count()} {jax.default_backend()} device(s), "
        f"{'sync' if args.sync else 'async'} saves, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

  root = tempfile.mkdtemp(prefix="xlt_digest_bench_", dir=args.dir)
  identity = {"benchmark": args.size}
  managers = {kind: checkpointing.CheckpointManager(os.path.join(root, kind), period=1, keep=1,
                                                    async_save=not args.sync)
              for kind in ("with digests", "without digests")}

  def save_without_digests(manager, step_state, step):
    # CheckpointManager.save before digests: the same orbax items, minus `digests`.
    manager._manager.save(step, args=ocp.args.Composite(  # pylint: disable=protected-access
        params=ocp.args.StandardSave(step_state.params),
        opt_state=ocp.args.StandardSave(step_state.opt_state),
        progress=ocp.args.JsonSave({"step": step, "input_position": 0, "batch_size": None,
                                    checkpointing.LAYOUT_KEY: optimizer_lib.STATE_LAYOUT}),
        run=ocp.args.JsonSave(identity)), force=True)

  # Each save gets new arrays, as after a train step: a jax array caches its host copy, so
  # saving the same arrays again would skip orbax's copy to the host.
  fresh_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))

  def timed_save(kind, step):
    manager = managers[kind]
    params, opt_state = fresh_copy((state.params, state.opt_state))
    step_state = TrainState(step=jax.device_put(np.int32(step), state.step.sharding),
                            params=params, opt_state=opt_state)
    jax.block_until_ready(step_state)
    os.sync()  # no dirty pages of the previous saves left to slow this one's writes
    start = time.perf_counter()
    if kind == "with digests":
      manager.save(step_state, 0, identity, force=True)
    else:
      save_without_digests(manager, step_state, step)
    blocked = time.perf_counter() - start
    manager.wait_until_finished()
    return blocked, time.perf_counter() - start

  times = {kind: [] for kind in managers}
  step = 0
  try:
    for repeat in range(args.repeats + 1):  # the first of each is a warm-up
      order = list(managers) if repeat % 2 == 0 else list(reversed(list(managers)))
      for kind in order:
        step += 1
        blocked, complete = timed_save(kind, step)
        if repeat:
          times[kind].append((blocked, complete))
        print(f"  {'warm-up' if not repeat else f'repeat {repeat}'} {kind:16s} blocked "
              f"{blocked:7.3f} s, complete {complete:7.3f} s")
    digest_times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      digests.compute({"params": state.params, "opt_state": state.opt_state})
      digest_times.append(time.perf_counter() - start)
  finally:
    for manager in managers.values():
      manager.close()
    shutil.rmtree(root, ignore_errors=True)

  # The median, and the minimum: the other jobs of a shared machine only add time.
  for name, statistic in (("median", statistics.median), ("minimum", min)):
    value = {kind: tuple(statistic(t[i] for t in times[kind]) for i in (0, 1))
             for kind in times}
    with_d, without_d = value["with digests"], value["without digests"]
    print(f"{name} of {args.repeats}:     blocked in save()   checkpoint complete")
    for kind in ("without digests", "with digests"):
      print(f"  {kind:16s}      {value[kind][0]:8.3f} s          {value[kind][1]:8.3f} s")
    print(f"  ratio (with/without)  {with_d[0] / without_d[0]:8.3f}            "
          f"{with_d[1] / without_d[1]:8.3f}")
  print(f"digest computation alone (all {len(leaves) - 1} arrays, to the host): median "
        f"{statistics.median(digest_times):.3f} s")


if __name__ == "__main__":
  main()
