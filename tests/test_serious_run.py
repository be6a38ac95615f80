"""The rest of a serious run: bf16 compute with fp32 parameters, optimizer state, gates, states and
norms; the persistent compilation cache and a profiler trace in the workdir; models.load and
python -m train.sample from a trained run."""

import collections
import glob
import gzip
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from tests.foundation_configs import tiny_lm
from tests.test_train_run import _launch
from train import checkpoint, loop, sample
from train import config as config_lib
from train import mesh as mesh_lib
from train.data import pipeline
from train.step import make_train_step

ALL_MIXERS = ("(attention, swiglu) + (gla, swiglu) + (delta_net, mlp) + (gated_delta_net, glu) + (mamba2, swiglu)"
              " + (retnet, swiglu) + (linear_attention, swiglu) + (mom, swiglu)")


def _eqns(jaxpr):
  """Every equation of `jaxpr`, inside scans, custom derivatives and other sub-jaxprs too."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple | list) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _eqns(sub)


def _bf16(blocks: str):
  c = tiny_lm()
  c.model.update(dict(dtype="bfloat16", blocks=blocks))
  c.model.options = {}
  mesh = mesh_lib.make_mesh({"data": -1}, jax.devices()[:1])
  batch = next(pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size))
  return loop.build_program(c, mesh), mesh, batch


def test_bf16_compute_keeps_gates_states_norms_params_and_optimizer_fp32():
  program, _, batch = _bf16(ALL_MIXERS)
  step = make_train_step(program.setup.graphdef, program.tx, lambda s: 1e-3, loss="xent")
  jaxpr = jax.make_jaxpr(step)(program.setup.abstract_state, jax.tree.map(jnp.asarray, batch))
  new_state, _ = jax.tree.unflatten(jax.tree.structure(jax.eval_shape(step, program.setup.abstract_state, batch)),
                                    jaxpr.out_avals)
  for part in ("params", "opt_state"):  # what one step writes back
    kinds = {str(x.dtype) for x in jax.tree.leaves(new_state[part]) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert kinds == {"float32"}, (part, kinds)
  jaxpr = jaxpr.jaxpr
  dtypes = collections.defaultdict(set)  # what -> input dtypes seen
  states = 0
  for eqn in _eqns(jaxpr):
    floats = {str(v.aval.dtype) for v in eqn.invars if hasattr(v.aval, "dtype") and "float" in str(v.aval.dtype)}
    if eqn.primitive.name == "scan":  # recurrent and chunk states [B, H, K, V] are scan carries of rank 4+
      n = eqn.params["num_consts"]
      carry = [v.aval for v in eqn.invars[n:n + eqn.params["num_carry"]] if "float" in str(v.aval.dtype)]
      floats = {str(a.dtype) for a in carry if a.ndim >= 4}
      states += bool(floats)
    dtypes[eqn.primitive.name] |= floats
  assert "bfloat16" in dtypes["dot_general"]  # the compute is bf16 ...
  assert states >= 7  # (one or more per recurrent mixer: all but attention)
  for what in ("scan", "rsqrt", "cumsum", "log", "log1p"):  # ... states, norms, gate cumsums and log-gates fp32
    assert dtypes[what] == {"float32"}, (what, dtypes[what])



def test_one_bf16_step_trains_with_fp32_state():
  program, mesh, batch = _bf16("(gla, swiglu)")
  with jax.set_mesh(mesh):
    state = program.init_state()
    new, m = program.train_step(state, loop.global_batch(batch, program.batch_sharding))
  assert np.isfinite(float(m["loss"])) and int(new["step"]) == 1
  for part in ("params", "opt_state"):
    kinds = {str(x.dtype) for x in jax.tree.leaves(new[part]) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert kinds == {"float32"}, (part, kinds)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """A tiny byte-level LM trained 4 steps by `python -m train`, with a compilation cache and a profile."""
  root = tmp_path_factory.mktemp("text_run")
  c = tiny_lm("text", steps=4)
  c.train.update(dict(compilation_cache_dir=str(root / "cache"), profile_steps=(2, 3)))
  config_lib.save(c, str(root / "cfg"))
  with pytest.MonkeyPatch.context() as env:
    env.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # keep even these small programs
    proc = _launch(root / "cfg" / "config.json", root / "run")
  _, err = proc.communicate(timeout=400)
  assert proc.returncode == 0, err[-3000:]
  return c, root


def test_compilation_cache_and_profile_trace_land_in_their_directories(text_run):
  _, root = text_run
  assert any("train_step" in name for name in os.listdir(root / "cache"))
  (trace,) = glob.glob(str(root / "run" / "profile" / "plugins" / "profile" / "*" / "*.trace.json.gz"))
  assert glob.glob(os.path.join(os.path.dirname(trace), "*.xplane.pb"))
  calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in json.load(gzip.open(trace))["traceEvents"]
                 if e.get("name") == "PjitFunction(train_step)")
  outermost = [t for i, t in enumerate(calls) if not any(s <= t[0] and t[1] <= e for s, e in calls[:i])]
  assert len(outermost) == 2  # steps 2 and 3 only


def test_load_has_the_checkpoint_parameters_and_sample_continues_a_prompt(text_run, capsys):
  c, root = text_run
  workdir = str(root / "run")
  model = models.load(workdir)
  # The parameters are the latest checkpoint's (the full train state restored by the training loop's way).
  program = loop.build_program(c, mesh_lib.make_mesh(c.mesh.shape))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=2, keep=3)
  state, _, _ = ckpt.restore(4, program.setup.abstract_state)
  ckpt.close()
  loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  chex.assert_trees_all_equal(jax.device_get(loaded), jax.device_get(state["params"]))
  earlier = nnx.to_pure_dict(nnx.state(models.load(workdir, step=2), nnx.Param))
  assert not np.array_equal(np.asarray(earlier["embed"]["embedding"]), np.asarray(loaded["embed"]["embedding"]))

  prompt = "def main("
  assert sample.main(["--workdir", workdir, "--prompt", prompt, "--max_new_tokens", "6"]) == 0
  printed = capsys.readouterr().out.rstrip("\n").splitlines()[-1]
  ids = list(prompt.encode())  # greedy decoding through the caches == argmax of the full (causal) forward
  forward = jax.jit(lambda tokens: model(tokens))
  for _ in range(6):
    ids.append(int(jnp.argmax(forward(jnp.asarray([ids + [0] * (len(prompt) + 6 - len(ids))]))[0, len(ids) - 1])))
  assert printed == prompt + bytes(i for i in ids[len(prompt):] if 0 < i < 256).decode("utf-8", errors="replace")
  hot = sample.sample(workdir, prompt, max_new_tokens=6, temperature=1.0, seed=3)
  assert len(hot["ids"]) == 6 and hot["ids"] == sample.sample(workdir, prompt, max_new_tokens=6, temperature=1.0,
                                                              seed=3)["ids"]
  assert sample.main(["--workdir", workdir, "--prompt_ids", "999"]) == 2
  assert "prompt ids must lie in [0, 256)" in capsys.readouterr().err
