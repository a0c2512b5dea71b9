"""bfloat16 training (bf16 activations and matmul operands, float32 accumulation, parameters,
optimizer, softmax, norms and loss) against float32, and the mixed-precision product itself."""
import itertools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xltransfer.model import layers
from xltransfer.model.config import get_config
from xltransfer.model.losses import NUM_REAL_TARGET_TOKENS
from xltransfer.model.models import EncoderDecoderModel
from xltransfer.partitioning import create_partitioner
from xltransfer.train.input import to_global_batch
from xltransfer.train.optimizer import Adafactor
from xltransfer.train.schedules import learning_rate_schedule
from xltransfer.train.trainer import Trainer, to_host

STEPS = 200
BATCH, LENGTH = 8, 16
TOKENS = 34  # ids 2..33: a small alphabet, so 200 steps learn the task well past its unigram loss


def _copy_batches(seed: int = 0):
  """A copy task: the targets repeat the inputs; learnable by the tiny model in 200 steps."""
  rng = np.random.default_rng(seed)
  for _ in range(STEPS):
    tokens = rng.integers(2, TOKENS, (BATCH, LENGTH), dtype=np.int32)
    decoder_inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), tokens[:, :-1]], axis=1)
    yield {"encoder_input_tokens": tokens, "decoder_input_tokens": decoder_inputs,
           "decoder_target_tokens": tokens,
           "decoder_loss_weights": np.ones_like(tokens, dtype=np.float32)}


def _train_losses(dtype: str, initial_params):
  model = EncoderDecoderModel(get_config("tiny", dtype=dtype),
                              loss_normalizing_factor=NUM_REAL_TARGET_TOKENS)
  partitioner = create_partitioner()
  optimizer = Adafactor().create(learning_rate_schedule("constant", 0.01),
                                 model.abstract_params(), model.param_logical_axes())
  trainer = Trainer(model, optimizer, partitioner)
  state = trainer.state_from_params(jax.tree.map(jnp.copy, initial_params))
  losses = []
  for batch in _copy_batches():
    state, metrics = trainer.train_step(state, to_global_batch(batch, partitioner, BATCH))
    losses.append(metrics["loss"])
  return np.array([float(x) for x in to_host(losses)])


@pytest.mark.slow
def test_bf16_training_ends_within_2_percent_of_float32():
  initial = jax.jit(EncoderDecoderModel(get_config("tiny")).init)(jax.random.PRNGKey(0))
  f32 = _train_losses("float32", initial)
  bf16 = _train_losses("bfloat16", initial)
  # It learned past the loss of guessing uniformly among the 32 ids (ln 32 = 3.47; it starts
  # near ln 1024 = 6.9): the comparison means something.
  assert f32[-10:].mean() < np.log(TOKENS - 2) < f32[0], f32
  assert not np.allclose(f32, bf16, rtol=1e-6)  # the two modes did compute differently
  final_f32, final_bf16 = f32[-10:].mean(), bf16[-10:].mean()  # the last 10 steps, less noisy
  assert abs(final_bf16 - final_f32) <= 0.02 * final_f32, (final_f32, final_bf16)


SPECS = [("re,ef->rf", (24, 16), (16, 40)), ("re,fe->rf", (24, 16), (40, 16)),
         ("bqhd,bhkd->bhqk", (2, 12, 3, 8), (2, 3, 10, 8)),
         ("bhqk,bhkd->bqhd", (2, 3, 12, 10), (2, 3, 10, 8))]


@pytest.mark.parametrize("spec,shape_a,shape_b", SPECS)
def test_mixed_einsum_and_its_gradients_match_float32(spec, shape_a, shape_b):
  rng = np.random.RandomState(0)
  a = jnp.asarray(rng.randn(*shape_a), jnp.bfloat16)
  b = jnp.asarray(rng.randn(*shape_b), jnp.bfloat16)
  a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
  out = layers.mixed_einsum(spec, a, b)
  assert out.dtype == jnp.float32
  # bf16 inputs are exact in float32, so only the float32 summation order differs.
  np.testing.assert_allclose(out, jnp.einsum(spec, a32, b32), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, y: jnp.sum(jnp.sin(f(x, y)))
  grads = jax.grad(loss(lambda x, y: layers.mixed_einsum(spec, x, y)), (0, 1))(a, b)
  expected = jax.grad(loss(lambda x, y: jnp.einsum(spec, x, y)), (0, 1))(a32, b32)
  for got, want in zip(grads, expected):
    assert got.dtype == jnp.bfloat16
    # The cotangent is rounded to bf16 before the backward products: bf16 accuracy.
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.02,
                               atol=0.02 * float(jnp.max(jnp.abs(want))))


def _gated_gelu_float64(gate, linear, g):
  """gelu_tanh(gate) * linear and its gradients, in float64 from the formula (not from jax)."""
  gate, linear, g = (np.asarray(x, np.float64) for x in (gate, linear, g))
  c = np.sqrt(2.0 / np.pi)
  tanh = np.tanh(c * (gate + 0.044715 * gate ** 3))
  gelu = 0.5 * gate * (1.0 + tanh)
  slope = 0.5 * (1.0 + tanh) + 0.5 * gate * (1.0 - tanh ** 2) * c * (1.0 + 3 * 0.044715 * gate ** 2)
  return gelu * linear, g * linear * slope, g * gelu


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gated_gelu_and_its_gradients_match_a_float64_reference(dtype):
  rng = np.random.RandomState(0)
  # Gates over the range where tanh saturates and where the cubic term matters.
  gate = jnp.asarray(np.concatenate([np.linspace(-12, 12, 97), 3 * rng.randn(2000)]), dtype)
  linear = jnp.asarray(rng.randn(gate.size), dtype)
  g = jnp.asarray(rng.randn(gate.size), dtype)
  out, vjp = jax.vjp(layers.gated_gelu, gate, linear)
  d_gate, d_linear = vjp(g)
  want = _gated_gelu_float64(gate, linear, g)
  # float32 inside: one rounding to the output dtype (bf16: 2^-8 relative). Where tanh
  # nears -1, 1 + tanh cancels in float32, and float32's tanh is exactly -1 beyond an argument
  # of about 9 (gate < -4.7), where gelu's slope is below 2e-6 (flax's gelu does the same):
  # an absolute error of 2e-6 times g * linear, below 5e-6 of the largest values here.
  rtol = 1e-5 if dtype == jnp.float32 else 2 ** -8
  for got, expected in zip((out, d_gate, d_linear), want):
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol,
                               atol=5e-6 * np.abs(expected).max())
  # The same function as the expression it replaces (flax's tanh-approximate gelu).
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x32, y32 = gate.astype(jnp.float32), linear.astype(jnp.float32)
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             nn.gelu(x32, approximate=True) * y32, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("spec", ["ab,bc", "ab,bc->ad", "aa,ab->b", "ab,bc->c", "a1,1c->ac"])
def test_mixed_einsum_rejects_what_it_cannot_compute(spec):
  x = jnp.ones((2, 2), jnp.bfloat16)
  with pytest.raises(ValueError, match="mixed_einsum"):
    layers.mixed_einsum(spec, x, x)


def test_mixed_einsum_rejects_integer_operands():
  with pytest.raises(ValueError, match="floating operands"):
    layers.mixed_einsum("ab,bc->ac", jnp.ones((2, 2), jnp.bfloat16), jnp.ones((2, 2), jnp.int32))


@pytest.mark.parametrize("kernel_first", [False, True])
def test_float32_kernel_is_cast_inside_and_its_gradient_stays_float32(kernel_first):
  """bf16 activations times a float32 kernel: the product is the bf16 x bf16 -> f32 product of
  the kernel rounded to bf16, and the kernel's gradient leaves the float32 accumulation as it
  is. Before, the kernel was cast outside: its gradient came back as bf16 (rounded) and was
  converted to float32, two passes over the largest gradient of a train step."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(24, 16), jnp.bfloat16)
  kernel = jnp.asarray(rng.randn(16, 40), jnp.float32)
  spec, args = (("ef,re->rf", (kernel, x)) if kernel_first else ("re,ef->rf", (x, kernel)))
  out = layers.mixed_einsum(spec, *args)
  reference = jnp.einsum("re,ef->rf", x.astype(jnp.float32),
                         kernel.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)

  cotangent = jnp.asarray(rng.randn(24, 40), jnp.bfloat16)  # exact in bf16: no rounding below
  k_index = 0 if kernel_first else 1
  _, vjp = jax.vjp(lambda *a: layers.mixed_einsum(spec, *a), *args)
  grads = vjp(cotangent.astype(jnp.float32))
  grad_kernel, grad_x = grads[k_index], grads[1 - k_index]
  assert grad_kernel.dtype == jnp.float32 and grad_x.dtype == jnp.bfloat16
  want = jnp.einsum("re,rf->ef", x.astype(jnp.float32), cotangent.astype(jnp.float32))
  np.testing.assert_allclose(grad_kernel, want, rtol=1e-6, atol=1e-6)
  # A gradient rounded to bf16 on the way would have only bf16-representable values.
  assert np.mean(np.asarray(grad_kernel) == np.asarray(
      grad_kernel.astype(jnp.bfloat16).astype(jnp.float32))) < 0.5


def test_off_a_cpu_the_kernel_gradient_is_rounded_to_bf16_as_t5x_does(monkeypatch):
  """On TPU/GPU targets the float32 kernel's gradient is rounded to bf16 before it returns to
  float32, as with the kernel cast outside the product (T5X's form): that rounding is what lets
  XLA:TPU all-reduce a data-parallel gradient in bf16 (see the compile-only TPU test below)."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(24, 16), jnp.bfloat16)
  kernel = jnp.asarray(rng.randn(16, 40), jnp.float32)
  monkeypatch.setattr(layers, "target_platform", lambda: "tpu")
  grad = jax.grad(lambda k: jnp.sum(jnp.sin(layers.mixed_einsum("re,ef->rf", x, k))))(kernel)
  assert grad.dtype == jnp.float32
  np.testing.assert_array_equal(grad, grad.astype(jnp.bfloat16).astype(jnp.float32))


_TPU_ALL_REDUCE_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from xltransfer.model import layers
mesh = Mesh(np.array(topologies.get_topology_desc("v5e:2x2", "tpu").devices), ("data",))
rows = jax.ShapeDtypeStruct((4096, 1024), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
kernel = jax.ShapeDtypeStruct((1024, 2048), jnp.float32, sharding=NamedSharding(mesh, P()))
loss = lambda k, x: jnp.sum(jnp.sin(layers.mixed_einsum("re,ef->rf", x, k)))
with mesh:
  text = jax.jit(jax.grad(loss), out_shardings=NamedSharding(mesh, P())).lower(
      kernel, rows).compile().as_text()
print("ALL_REDUCE", [line.split(" = ")[1].split("[")[0] for line in text.splitlines()
                     if " all-reduce(" in line and " = " in line])
"""


@pytest.mark.slow
def test_tpu_all_reduces_a_data_parallel_kernel_gradient_in_bf16():
  """XLA:TPU (libtpu's compile-only v5e:2x2, the real compiler) all-reduces the kernel gradient
  of a batch-sharded product in bf16, as it did with the kernel cast outside the product; with
  the gradient left in float32 (the CPU form) it all-reduced float32, twice the bytes."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from xltransfer.planning import devices, machines  # pylint: disable=import-outside-toplevel
  # libtpu is pinned in the test extra (setup.py), as for test_plan.py's real-topology plans:
  # without it this environment is not the one the tests are specified for.
  assert devices.libtpu_path() is not None, "libtpu is missing: pip install -e '.[test]'"
  env = devices.worker_environment(machines.parse_machine("v5e:2x2"), dict(os.environ))
  done = subprocess.run([sys.executable, "-c", _TPU_ALL_REDUCE_SCRIPT], env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("ALL_REDUCE")]
  assert done.returncode == 0 and lines, done.stderr[-3000:]
  assert lines[-1] == "ALL_REDUCE ['bf16']", lines[-1]


def _dots(hlo_text):
  """(operand dtypes, result dtype, op name, asked for HIGHEST precision, canonical) of every
  dot in an optimized HLO module. Canonical is the form XLA:CPU gives its GEMM library: batch
  dimensions leading, the left operand contracted over its last dimensions, the right one
  over the dimensions after its batch dimensions or over its last ones."""
  declared = {name: (dtype, dims.count(",") + 1 if dims else 0)
              for name, dtype, dims in re.findall(r"%([\w.\-]+) = (\w+)\[([^\]]*)\]", hlo_text)}
  dims_of = lambda line, key: [int(d) for d in re.search(key + r"=\{([\d,]*)\}", line).group(1)
                               .split(",") if d] if re.search(key + "=", line) else []
  found = []
  for line in hlo_text.splitlines():
    match = re.search(r"= (\w+)\[[^\]]*\]\{[^}]*\} dot\(%([\w.\-]+), %([\w.\-]+)\)", line)
    if match:
      name = re.search(r'op_name="([^"]*)"', line)
      (lhs_type, lhs_rank), (rhs_type, rhs_rank) = declared[match.group(2)], declared[match.group(3)]
      batch = dims_of(line, "lhs_batch_dims")
      lhs_contract, rhs_contract = dims_of(line, "lhs_contracting_dims"), dims_of(line, "rhs_contracting_dims")
      leading = list(range(len(batch)))
      count = len(rhs_contract)
      canonical = (batch == leading and dims_of(line, "rhs_batch_dims") == leading
                   and lhs_contract == list(range(lhs_rank - len(lhs_contract), lhs_rank))
                   and rhs_contract in (list(range(len(batch), len(batch) + count)),
                                        list(range(rhs_rank - count, rhs_rank))))
      found.append((lhs_type, rhs_type, match.group(1), name.group(1) if name else "",
                    "operand_precision={highest" in line, canonical))
  return found


@pytest.mark.parametrize("num_heads", [4, 3])
def test_every_bf16_train_step_product_takes_bf16_operands_into_float32(num_heads):
  """XLA:CPU upcasts a bf16 dot it cannot give its GEMM library (a transposed operand, a
  float32 cotangent) to a float32 dot at less than half the speed, and a non-canonical
  bf16 x bf16 -> f32 dot fails at run time ("Unsupported element type for DotThunk"); none
  may be left. (The relative position bias is a gather, not a product.) The one float32
  product by design is the position bias gradient's sum over the batch
  (`layers.add_position_bias`, asked for at HIGHEST precision so a TPU does not round it to
  bf16), one per stack. With 3 heads the attention width (48) is under the embedding's (64), as
  in mT5-small (384 < 512): a query/key/value kernel gradient then transposes the smaller
  cotangent and its own result, which XLA folds back into a non-canonical dot unless kept apart
  (`layers._canonical_einsum`)."""
  model = EncoderDecoderModel(get_config("tiny", dtype="bfloat16", num_heads=num_heads))
  # 2 x 128 rows: past 192 rows copying the 48-wide cotangent is the cheaper plan (64*48/16).
  first, second = itertools.islice(_copy_batches(), 2)
  batch = {k: jnp.concatenate([first[k], second[k]]) for k in first}
  grad_fn = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b)[0]))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  text = grad_fn.lower(params, batch).compile().as_text()
  dots = _dots(text)
  assert len(dots) > 30
  # (HLO instruction names are unique within a module, so a name's declaration gives its type.)
  batch_sums = [d for d in dots if d[4]]
  assert [d[:3] for d in batch_sums] == [("f32", "f32", "f32")] * 2
  upcast = [d for d in dots if d[:3] != ("bf16", "bf16", "f32") and not d[4]]
  assert not upcast, upcast[:5]
  not_canonical = [d for d in dots if not d[4] and not d[5]]
  assert not not_canonical, not_canonical[:5]


@pytest.mark.slow
@pytest.mark.parametrize("logits_via_embedding", [False, True])
def test_decoding_casts_the_weights_once_with_the_same_tokens(monkeypatch, logits_via_embedding):
  """Greedy decoding in bf16 casts the matmul weights before its loop (not once per step): the
  kernels, and the embedding only where it gives the logits (tied, as T5 v1.0). An untied
  embedding (mT5) is only looked up, a few rows a step, so it stays float32. The layers cast
  the same way, so the tokens are exactly those without the pre-cast."""
  from xltransfer.model import decoding  # pylint: disable=import-outside-toplevel
  config = get_config("tiny", dtype="bfloat16").replace(logits_via_embedding=logits_via_embedding)
  model = EncoderDecoderModel(config)
  params = model.init(jax.random.PRNGKey(1))
  cast = decoding.weights_in_compute_dtype(params, jnp.bfloat16, logits_via_embedding)
  assert cast["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].dtype == jnp.bfloat16
  assert cast["decoder"]["decoder_norm"]["scale"].dtype == jnp.float32
  embedding = jnp.bfloat16 if logits_via_embedding else jnp.float32
  assert cast["token_embedder"]["embedding"].dtype == embedding
  if not logits_via_embedding:
    assert cast["decoder"]["logits_dense"]["kernel"].dtype == jnp.bfloat16
  assert decoding.weights_in_compute_dtype(params, jnp.float32, logits_via_embedding) is params
  inputs = jnp.asarray(np.random.RandomState(0).randint(2, 1024, (3, 12)), jnp.int32)
  tokens = model.greedy_decode(params, inputs, 10)
  monkeypatch.setattr(decoding, "weights_in_compute_dtype", lambda p, dtype, tied: p)
  uncast = jax.jit(lambda p, x: decoding.greedy_decode(model.module, p, x, 10))(params, inputs)
  np.testing.assert_array_equal(tokens, uncast)


def _without_vocab_major_kernel(params, config):
  from xltransfer.model import decoding  # pylint: disable=import-outside-toplevel
  return {"params": decoding.weights_in_compute_dtype(params, config.activation_dtype,
                                                      config.logits_via_embedding)}


def test_low_precision_decoding_reads_a_vocab_major_output_kernel():
  """bf16 decoding hands the decoder the output kernel transposed once, [vocab, embed]; a
  float32 model (slower that way) and a tied one (no output kernel) do not get one. The
  decoder reads it: a zero kernel there gives zero logits whatever `logits_dense` holds."""
  from xltransfer.model import decoding, network  # pylint: disable=import-outside-toplevel
  config = get_config("tiny", dtype="bfloat16")
  model = EncoderDecoderModel(config)
  params = model.init(jax.random.PRNGKey(1))
  weights = decoding.decoding_variables(params, config)
  kernel = weights[network.DECODING_WEIGHTS]["decoder"][network.VOCAB_MAJOR_LOGITS_KERNEL]
  assert kernel.dtype == jnp.bfloat16 and kernel.shape == (config.vocab_size, config.emb_dim)
  np.testing.assert_array_equal(
      kernel, params["decoder"]["logits_dense"]["kernel"].astype(jnp.bfloat16).T)
  for other in (config.replace(dtype="float32"), config.replace(logits_via_embedding=True)):
    assert set(decoding.decoding_variables(params, other)) == {"params"}
  with pytest.MonkeyPatch.context() as patch:  # measured on XLA:CPU only: accelerators keep theirs
    patch.setattr(layers, "target_platform", lambda: "tpu")
    assert set(decoding.decoding_variables(params, config)) == {"params"}

  inputs = jnp.asarray(np.random.RandomState(0).randint(2, 1024, (2, 6)), jnp.int32)
  encoded = model.module.apply(weights, inputs, method=network.Transformer.encode)
  zeroed = {**weights, network.DECODING_WEIGHTS: {"decoder": {
      network.VOCAB_MAJOR_LOGITS_KERNEL: jnp.zeros_like(kernel)}}}
  for variables, zero in ((zeroed, True), (weights, False)):
    logits, _ = model.module.apply(variables, encoded, inputs, jnp.zeros((2, 1), jnp.int32),
                                   decode=True, max_decode_length=4, mutable=["cache"],
                                   method=network.Transformer.decode)
    assert bool(jnp.all(logits == 0)) == zero


@pytest.mark.parametrize("beams", [1, 3])
def test_vocab_major_output_kernel_decodes_the_same_tokens(monkeypatch, beams):
  """Greedy decoding and beam search in bf16 give the same tokens with the vocab-major output
  kernel as with the stored [embed, vocab] one (the same bf16 products, another layout)."""
  from xltransfer.model import decoding  # pylint: disable=import-outside-toplevel
  config = get_config("tiny", dtype="bfloat16")
  model = EncoderDecoderModel(config)
  params = model.init(jax.random.PRNGKey(2))
  inputs = jnp.asarray(np.random.RandomState(1).randint(2, 1024, (3, 10)), jnp.int32)

  def search(p):
    if beams == 1:
      return model.greedy_decode(p, inputs, 8)
    return model.beam_search(p, inputs, 8, beams)[0]
  with_kernel = np.asarray(search(params))
  monkeypatch.setattr(decoding, "decoding_variables", _without_vocab_major_kernel)
  model = EncoderDecoderModel(config)  # Fresh jit caches: the patched variables are traced.
  np.testing.assert_array_equal(with_kernel, np.asarray(search(params)))


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_weights_made_once_decode_the_same_tokens(beams):
  """`model.decoding_weights(params)` (what evaluation makes once for all its batches) decodes
  the same tokens as `params`, greedy and beam search, with the same beam scores."""
  from xltransfer.model import decoding, network  # pylint: disable=import-outside-toplevel
  config = get_config("tiny", dtype="bfloat16")
  model = EncoderDecoderModel(config)
  params = model.init(jax.random.PRNGKey(3))
  prepared = model.decoding_weights(params)
  assert isinstance(prepared, decoding.DecodingWeights)
  # The cast and (on this CPU) the vocab-major output kernel are in it.
  assert network.DECODING_WEIGHTS in prepared.variables
  assert prepared.variables["params"]["decoder"]["logits_dense"]["kernel"].dtype == jnp.bfloat16
  inputs = jnp.asarray(np.random.RandomState(4).randint(2, 1024, (3, 10)), jnp.int32)
  if beams == 1:
    np.testing.assert_array_equal(model.greedy_decode(prepared, inputs, 8),
                                  model.greedy_decode(params, inputs, 8))
  else:
    for got, want in zip(model.beam_search(prepared, inputs, 8, beams),
                         model.beam_search(params, inputs, 8, beams)):
      np.testing.assert_array_equal(got, want)
