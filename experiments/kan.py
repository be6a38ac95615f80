"""KAN (Liu et al., "KAN: Kolmogorov-Arnold Networks"): do KANs scale faster than MLPs on symbolic functions?

The claim: on smooth compositional functions (exp(sin(pi x) + y^2), Bessel J0(20x), a 4-D
composition) the test RMSE of a B-spline KAN falls as params^-alpha with a larger alpha than MLPs,
using grid extension (train on a coarse grid, refine it, keep training) to add parameters.

One model on one function through the shared loop (regression, MSE; eval_loss = test MSE):
  python -m train --config experiments/kan.py:local --workdir runs/kan/exp_sin_kan
  python -m train --config experiments/kan.py:local,layer=linear,width=32 --workdir runs/kan/exp_sin_mlp
Sweep (KAN grids x MLP widths):
  python -m train.sweep --config experiments/kan.py:local
Scaling study with grid extension (parameter shapes change mid-training, so this runs its own small
full-batch Adam loop on the same models and data), writing results.json and scaling.png:
  python -m experiments.kan --workdir runs/kan/scaling [--function exp_sin] [--quick]
Expect: KAN test RMSE drops by orders of magnitude as the grid goes 3 -> 50 (fitted alpha well above
the MLP's); the paper reports alpha ~ 4 (cubic splines, with LBFGS, to 1e-4..1e-6 RMSE). Adam on
2 CPU cores gets less far, and MLPs plateau around 1e-2..1e-3.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import models
from experiments import common
from models.mlp import mlp_model_config
from train.data.function_fit import FUNCTIONS, function_arrays

# KAN shapes from the paper's examples (hidden widths between n_vars inputs and 1 output).
KAN_HIDDEN = {"exp_sin": (1,), "xy": (2,), "bessel": (), "composition4": (4, 2)}
GRIDS = (3, 5, 10, 20, 50)
MLP_WIDTHS = (4, 8, 16, 32, 64)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, function="exp_sin", layer="kan", width=0, grid=5, steps=3000, local=False)
  n_vars = FUNCTIONS[arg.function][0]
  hidden = (arg.width,) * 2 if arg.width else KAN_HIDDEN[arg.function]
  c = common.base_config()
  c.model = mlp_model_config(hidden, layer=arg.layer, activation="silu", n_outputs=1, in_features=n_vars,
                             grid_size=arg.grid)
  c.data.update(dict(name="function_fit", batch_size=200, train_split="train", eval_split="test",
                     function=arg.function, train_examples=1000, eval_examples=1000, dataset_seed=0))
  c.optim.update(common.adamw(lr=1e-2, warmup=50, schedule="cosine", clip=10.0, weight_decay=0.0, b2=0.999))
  steps = 300 if arg.local else arg.steps
  c.train.update(dict(loss="mse", steps=steps, log_every=max(steps // 30, 1), eval_steps=5,
                      eval_every=max(steps // 3, 1), ckpt_every=max(steps // 3, 1)))
  if arg.layer == "kan":  # KAN's data-driven grids: refit the knots to the inputs early in training
    c.train.update(dict(grid_update_every=max(steps // 10, 1), grid_update_until=steps // 2))
  return c


def sweep(add) -> None:
  for grid in GRIDS:
    add(**{"model.layer": "kan", "model.grid_size": grid})
  for width in MLP_WIDTHS:
    add(**{"model.layer": "linear", "model.hidden": (width, width)})


def _fit(model, x, y, steps: int, lr: float):
  """Full-batch Adam on MSE; returns the trained model."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05))

  @jax.jit
  def run(params, opt_state):
    def step(carry, _):
      params, opt_state = carry
      grads = jax.grad(lambda p: jnp.mean((nnx.merge(graphdef, p, rest)(x) - y) ** 2))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    return jax.lax.scan(step, (params, opt_state), length=steps)[0][0]

  return nnx.merge(graphdef, run(params, tx.init(params)), rest)


def scaling_study(function: str, grids, widths, steps: int, workdir: str) -> dict:
  """Test RMSE vs parameters: a KAN through grid extension, and MLPs of growing width."""
  import matplotlib
  import matplotlib.ticker

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  x, y = map(jnp.asarray, function_arrays(function, 1000, 0))
  xt, yt = map(jnp.asarray, function_arrays(function, 1000, 1))
  n_vars = x.shape[1]

  def rmse(model) -> float:
    return float(jnp.sqrt(jnp.mean((model(xt) - yt) ** 2)))

  def n_params(model) -> int:
    return int(sum(np.prod(p.shape) for p in nnx.to_flat_state(nnx.state(model, nnx.Param)).leaves))

  results = {"function": function, "kan": [], "mlp": []}
  kan = models.build(mlp_model_config(KAN_HIDDEN[function], layer="kan", n_outputs=1, in_features=n_vars,
                                      grid_size=grids[0]), rngs=nnx.Rngs(0))
  for i, grid in enumerate(grids):
    if i:
      kan.update_grid(x, grid_size=grid)  # grid extension keeps the learned function
    kan = _fit(kan, x, y, steps, 1e-2)
    results["kan"].append({"grid": grid, "params": n_params(kan), "test_rmse": rmse(kan)})
    print(f"kan  grid {grid:>4}: params {n_params(kan):>6}  test RMSE {rmse(kan):.3e}")
  for width in widths:
    mlp = models.build(mlp_model_config((width, width), activation="silu", n_outputs=1, in_features=n_vars),
                       rngs=nnx.Rngs(0))
    mlp = _fit(mlp, x, y, steps * len(grids), 3e-3)
    results["mlp"].append({"width": width, "params": n_params(mlp), "test_rmse": rmse(mlp)})
    print(f"mlp width {width:>4}: params {n_params(mlp):>6}  test RMSE {rmse(mlp):.3e}")
  fig, ax = plt.subplots(figsize=(5, 4))
  for name, rows in (("KAN (grid extension)", results["kan"]), ("MLP (2 hidden layers)", results["mlp"])):
    p = np.array([r["params"] for r in rows], float)
    e = np.array([r["test_rmse"] for r in rows], float)
    alpha = -np.polyfit(np.log(p), np.log(e), 1)[0]
    results["alpha_" + name.split()[0].lower()] = float(alpha)
    ax.loglog(p, e, "o-", label=f"{name}: alpha={alpha:.2f}")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set(xlabel="parameters", ylabel="test RMSE", title=f"{function}: RMSE ~ params^-alpha")
  ax.legend()
  os.makedirs(workdir, exist_ok=True)
  fig.savefig(os.path.join(workdir, "scaling.png"), dpi=120, bbox_inches="tight")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(f"alpha KAN {results['alpha_kan']:.2f} vs MLP {results['alpha_mlp']:.2f} -> {workdir}/scaling.png")
  return results


def main() -> None:
  p = argparse.ArgumentParser(description="KAN vs MLP scaling study with grid extension.")
  p.add_argument("--workdir", default="runs/kan/scaling")
  p.add_argument("--function", default="exp_sin", choices=sorted(FUNCTIONS))
  p.add_argument("--steps", type=int, default=1000, help="Adam steps per grid (MLPs get steps x #grids)")
  p.add_argument("--quick", action="store_true", help="3 grids, 3 widths, 300 steps")
  args = p.parse_args()
  grids, widths, steps = (GRIDS[:3], MLP_WIDTHS[:3], 300) if args.quick else (GRIDS, MLP_WIDTHS, args.steps)
  scaling_study(args.function, grids, widths, steps, args.workdir)


if __name__ == "__main__":
  main()
