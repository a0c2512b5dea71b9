"""The plan as text: per-device memory against HBM, FLOPs and the throughput ceiling, verdict."""
from typing import Any, Dict, List

GIB = 1024 ** 3


def _gib(n) -> str:
  """GiB for the big numbers, MiB below one GiB (tiny test models)."""
  if abs(n) >= GIB:
    return f"{n / GIB:8.2f} GiB"
  return f"{n / 2**20:8.1f} MiB"


def _step_lines(step: Dict[str, Any], hbm: int) -> List[str]:
  lines = [f"  {step['name']}: lowered in {step['lower_seconds']:.1f} s, compiled in "
           f"{step['compile_seconds']:.1f} s"]
  if step["out_of_memory"]:
    lines.append(f"    DOES NOT FIT: the compiler ran out of memory: {step['out_of_memory']}")
    return lines
  for label, key in (("arguments", "argument_bytes"), ("outputs", "output_bytes"),
                     ("aliased (donated)", "alias_bytes"), ("temporaries", "temp_bytes"),
                     ("generated code", "code_bytes"), ("peak", "peak_bytes")):
    lines.append(f"    {label:<18} {_gib(step[key])}")
  headroom = hbm - step["peak_bytes"]
  lines.append(f"    {'headroom':<18} {_gib(headroom)}  ({100 * headroom / hbm:.1f}% of HBM)")
  if step["compiler_flops"] is not None:
    lines.append(f"    {'XLA FLOPs/device':<18} {step['compiler_flops']:.3e}")
  return lines


def format_text(plan: Dict[str, Any]) -> str:
  target, config, state, flops = plan["target"], plan["config"], plan["state"], plan["flops"]
  hbm = target["hbm_bytes"]
  lengths = config["task_feature_lengths"]
  # A dual encoder's rows are (query, candidate) pairs, its model the encoder alone.
  dual = config.get("model_kind") == "dual_encoder"
  kind = " dual encoder (token embedding + encoder)" if dual else ""
  rows = (f"queries {lengths['inputs']} / candidates {lengths['targets']}" if dual
          else f"inputs {lengths['inputs']} / targets {lengths['targets']}")
  lines = [
      f"plan for {', '.join(config['gin_files'])}",
      f"target: {target['name']} ({target['num_devices']} × {target['device']}, "
      f"{target['hbm_bytes'] / GIB:.2f} GiB HBM each, {target['peak_flops'] / 1e12:.0f} "
      f"TFLOP/s bf16 peak); compiled with {target['compiler']}",
      f"mesh: {config['mesh']}  rules: {config['rules']}",
      f"model: mT5 {config['model_size']}{kind} ({state['num_parameters'] / 1e9:.3f}B "
      f"parameters), scan_layers={config['scan_layers']} remat={config['remat_policy']}",
      f"batch: {config['batch_size']} × {rows} (pack={config['pack']}, "
      f"microbatches={config['num_microbatches']}); inference batch "
      f"{config['inference_batch_size']}",
      *(f"note: {note}" for note in plan.get("notes", [])),
      "",
      "state (params + optimizer):      total        per device",
  ]
  for group in ("params", "opt_state"):
    lines.append(f"  {group:<14} {_gib(state['total_bytes'][group])}  "
                 f"{_gib(state['per_device_bytes'][group])}")
  lines += ["", "largest arrays (logical axes -> mesh axes, per-device shape):"]
  for a in state["largest_arrays"]:
    lines.append(f"  {a['path']}  {a['shape']} {a['dtype']}  ({', '.join(a['logical_axes'])})"
                 f" -> ({', '.join(a['mesh_axes'])})  {a['per_device_shape']}  "
                 f"{a['per_device_bytes'] / 2**20:.1f} MiB/device")
  lines += ["", "compiled steps (per device):"]
  for step in plan["steps"].values():
    lines += _step_lines(step, hbm)
  lines += [
      "",
      f"FLOPs per train step: {flops['model_flops_per_step']:.3e} model (6·N·tokens-style, "
      + (f"no remat), {flops['compiler_flops_per_step']:.3e} counted by XLA"
         if flops["compiler_flops_per_step"] is not None else "no remat)")
      + (" (a scanned layer body counts once)" if config["scan_layers"] else ""),
      f"ceiling at 100% MFU: {flops['ceiling_steps_per_second']:.3f} steps/s = "
      f"{flops['ceiling_tokens_per_second']:,.0f} tokens/s "
      f"({flops['tokens_per_step']:,} {'query+candidate' if dual else 'input+target'} tokens "
      "per step)",
      "",
      f"verdict: {plan['verdict']}",
  ]
  return "\n".join(lines)
