"""The train state as pure pytrees, created directly in its sharded layout.

state = {"params", "opt_state", "rest" (non-parameter variables such as RNG counters),
"step", "first_bad_step"}; the NNX graphdef stays outside, so the step is a pure function.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import models
from train import mesh as mesh_lib


@dataclasses.dataclass
class Setup:
  graphdef: Any
  abstract_model: nnx.Module  # shapes only (nnx.eval_shape), for analytic FLOPs
  abstract_params: nnx.State  # with metadata (axes, optim_group)
  shardings: dict  # same structure as the state
  abstract_state: dict  # ShapeDtypeStructs carrying shardings, for restore


def _split(model: nnx.Module):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, rest


def plan(model_cfg, seed: int, mesh: Mesh, rules) -> tuple:
  """(abstract model, graphdef, abstract params, param shardings, rest shardings)."""
  abstract_model = nnx.eval_shape(lambda: models.build(model_cfg, rngs=nnx.Rngs(seed)))
  graphdef, abs_params, abs_rest = _split(abstract_model)
  param_sh = mesh_lib.state_shardings(abs_params, rules, mesh)
  rest_sh = mesh_lib.state_shardings(abs_rest, rules, mesh)  # by `axes` where given (e.g. KAN grids)
  return abstract_model, graphdef, abs_params, param_sh, rest_sh


def setup(model_cfg, seed: int, make_tx, mesh: Mesh, rules) -> tuple[Setup, optax.GradientTransformation, Any]:
  """Plan the state layout; `make_tx(abstract_params) -> (tx, schedule)` builds the optimizer."""
  abstract_model, graphdef, abs_params, param_sh, rest_sh = plan(model_cfg, seed, mesh, rules)
  tx, lr = make_tx(abs_params)
  scalar = NamedSharding(mesh, PartitionSpec())
  opt_sh = follow_params(jax.eval_shape(tx.init, nnx.to_pure_dict(abs_params)), nnx.to_pure_dict(abs_params),
                         param_sh, scalar)
  shardings = {"params": param_sh, "opt_state": opt_sh, "rest": rest_sh, "step": scalar, "first_bad_step": scalar}
  abstract_state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    jax.eval_shape(lambda: _fresh(model_cfg, seed, tx)), shardings)
  return Setup(graphdef, abstract_model, abs_params, shardings, abstract_state), tx, lr


def follow_params(opt_state, params: dict, param_sh: dict, other: NamedSharding):
  """Shardings for an (abstract) optimizer state: a leaf at a parameter's path (Adam's mu and nu sit at
  .../mu/<param path>) with its shape is laid out as that parameter, anything else (step counts) as
  `other`. Left to XLA, the moments of FSDP-sharded parameters came out replicated on every device."""
  layout = {path: (sh, p.shape) for (path, sh), p in
            zip(jax.tree_util.tree_flatten_with_path(param_sh)[0], jax.tree.leaves(params))}

  def pick(path, leaf):
    for start in range(len(path)):
      sh, shape = layout.get(tuple(path[start:]), (None, None))
      if sh is not None and shape == leaf.shape:
        return sh
    return other

  return jax.tree_util.tree_map_with_path(pick, opt_state)


def _fresh(model_cfg, seed: int, tx: optax.GradientTransformation) -> dict:
  _, params, rest = _split(models.build(model_cfg, rngs=nnx.Rngs(seed)))
  params = nnx.to_pure_dict(params)
  return {"params": params, "opt_state": tx.init(params), "rest": nnx.to_pure_dict(rest),
          "step": jnp.int32(0), "first_bad_step": jnp.int32(-1)}


def initializer(model_cfg, seed: int, tx: optax.GradientTransformation, s: Setup):
  """A jitted () -> fresh state, each array created on its shards (no host-side full copy)."""
  return jax.jit(lambda: _fresh(model_cfg, seed, tx), out_shardings=s.shardings)


def model_from(s: Setup, state: dict) -> nnx.Module:
  return nnx.merge(s.graphdef, state["params"], state["rest"])
