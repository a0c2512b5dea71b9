"""What the side-by-side benchmarks share: the HF reference model and the timing loop.

Scripts in this folder run as `python benchmarks/NAME.py`, so this module is importable as
`hf_reference` from them.
"""
import os
import time


def same_host_malloc_for_both():
  """Restart under the host malloc settings `xltransfer` itself runs with; describe them.

  The `xltransfer` command restarts itself with huge-page malloc (`xltransfer/host_memory.py`);
  a benchmark of it must run under the same settings, and HF runs in the same process, so
  both sides see them. XLTRANSFER_HUGEPAGE_MALLOC=0 compares with the system's defaults.
  """
  from xltransfer import host_memory
  host_memory.restart_with_hugepage_malloc()
  return f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}"


def untied_hf_mt5(config, seed: int = 0, head_scale: float = 0.05, zero_head_rows=()):
  """A randomly initialised HF `MT5ForConditionalGeneration` with `config`'s shapes.

  transformers 5 ties the output layer whatever the config says; mT5's is separate, so a
  fresh `lm_head` is assigned. `zero_head_rows` zeroes output rows (e.g. EOS, so decoding
  never stops early and both sides decode the same number of tokens).
  """
  import torch
  import transformers

  from xltransfer.checkpoints import hf
  hf_config = transformers.MT5Config(**{k: v for k, v in hf.hf_config_dict(config).items()
                                        if k not in ("architectures", "model_type")})
  hf_config.dropout_rate = 0.0
  torch.manual_seed(seed)
  model = transformers.MT5ForConditionalGeneration(hf_config)
  head = torch.randn_like(model.lm_head.weight) * head_scale
  for row in zero_head_rows:
    head[row] = 0.0
  model.lm_head.weight = torch.nn.Parameter(head)
  return model


def timed(run, warmup: int, steps: int):
  """Mean seconds per call of `run` after `warmup` untimed calls, and the last result."""
  for _ in range(warmup):
    run()
  start = time.perf_counter()
  result = None
  for _ in range(steps):
    result = run()
  return (time.perf_counter() - start) / steps, result
