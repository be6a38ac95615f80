"""Draw the learned activation shapes of a trained run next to their init, as one PNG.

    python -m experiments.activation_plots RUN_DIR [--out FILE.png] [--range 3]

RUN_DIR is a workdir of `python -m train`: the latest checkpoint under RUN_DIR/checkpoints gives the
learned coefficients; the init is rebuilt from RUN_DIR/config.json (activation inits are presets or
constants, so the model's seed does not matter). `plot_activations(params, init_params)` is the
core and takes plain parameter pytrees (nested dicts of arrays).

What each panel shows: rational / group rational F(x) (one line per group); PolyReLU exactly;
PolyNorm as its response to standard-normal features, w0 x³/√15 + w1 x²/√3 + w2 x + b (N(x^k)
divides by the RMS of x^k over the features, √E[x^(2k)] for x ~ N(0, 1)); Swish-β x·σ(βx), APA /
AGLU, CRReLU and Snake exactly (per-channel parameters: at most 8 lines); VeLU as λ a(x) for a row of unit
RMS (its shape options, `velu=`, come from the run's config).
"""

import argparse
import json
import math
import pathlib
from typing import Any

import matplotlib
import numpy as np

from layers.activations.fit import rational_and_jacobian

matplotlib.use("Agg")
import matplotlib.pyplot as plt

POLYCOM = ("polynorm", "polyrelu")


def find_activations(params: Any, prefix: str = "") -> dict[str, dict]:
  """{module path: its learnable-activation leaves} for every rational / PolyCom / Swish-β module."""
  if not isinstance(params, dict):
    return {}
  keys = set(params)
  leaves = {k: v for k, v in params.items() if not isinstance(v, dict)}
  found = {}
  if {"numerator", "denominator"} <= keys or keys in ({"beta"}, {"kappa", "lam"}, {"eps"}, {"a"}, {"lam"}):
    found[prefix or "."] = leaves
  elif keys == {"weight", "bias"} and np.shape(params["weight"]) == (3,) and np.shape(params["bias"]) == (1,):
    found[prefix or "."] = leaves
  for k, v in params.items():
    if isinstance(v, dict):
      found.update(find_activations(v, f"{prefix}/{k}" if prefix else str(k)))
  return found


def _lines(values, n: int = 8) -> np.ndarray:
  """At most n of the (per-channel) parameter values, spread over their range."""
  v = np.asarray(values, np.float64).reshape(-1)
  return v[np.linspace(0, len(v) - 1, min(n, len(v))).astype(int)]


def curves(leaves: dict, x: np.ndarray, *, version: str = "A", polycom: str = "polynorm",
           gated: bool = False, velu: dict | None = None) -> tuple[str, list]:
  """(kind, [y per line]) of one activation module on the grid x (`gated`: κ, λ are AGLU's, not APA's;
  `velu`: the VeLU options the run used, else the layer's defaults)."""
  if set(leaves) == {"lam"}:
    o = {"alpha": 0.1, "beta1": 0.1, "beta2": 0.1, "gamma": 0.1, "momentum": 0.9, **(velu or {})}
    mix = np.arctan(o["beta1"] * x) + np.arcsin(np.clip(o["beta2"] * x, -1, 1))
    a = x / (1 + np.exp(-o["alpha"] * mix)) * (1 + o["gamma"] * np.tanh(o["momentum"]))
    return "velu (unit-RMS row)", [lam * a for lam in _lines(leaves["lam"])]
  if "kappa" in leaves:
    pairs = zip(_lines(leaves["kappa"]), np.maximum(_lines(leaves["lam"]), 1e-4))
    ys = [(lam * np.exp(-k * x) + 1) ** (-1 / lam) for k, lam in pairs]
    return ("aglu", [x * y for y in ys]) if gated else ("apa", ys)
  if "eps" in leaves:
    return "crrelu", [np.maximum(x, 0) + e * x * np.exp(-x**2 / 2) for e in _lines(leaves["eps"])]
  if "a" in leaves:
    return "snake", [x + np.sin(a * x) ** 2 / a for a in _lines(leaves["a"])]
  if "numerator" in leaves:
    a, b = np.asarray(leaves["numerator"], np.float64), np.asarray(leaves["denominator"], np.float64)
    groups = max(a.shape[0] if a.ndim == 2 else 1, b.shape[0] if b.ndim == 2 else 1)
    rows = [(a[g] if a.ndim == 2 else a, b[g] if b.ndim == 2 else b) for g in range(groups)]
    kind = f"group rational {version} (G={groups})" if groups > 1 else f"rational {version}"
    return kind, [rational_and_jacobian(x, ai, bi, version)[0] for ai, bi in rows]
  if "beta" in leaves:
    betas = np.unique(np.asarray(leaves["beta"], np.float64).ravel())
    betas = betas[np.linspace(0, len(betas) - 1, min(8, len(betas))).astype(int)]
    return "swish-β", [x / (1 + np.exp(-beta * x)) for beta in betas]
  w, bias = np.asarray(leaves["weight"], np.float64), float(np.asarray(leaves["bias"]).ravel()[0])
  if polycom == "polyrelu":
    r = np.maximum(x, 0.0)
    return "polyrelu", [w[0] * r**3 + w[1] * r**2 + w[2] * r + bias]
  return "polynorm (N(0,1) features)", [w[0] * x**3 / math.sqrt(15) + w[1] * x**2 / math.sqrt(3) + w[2] * x + bias]


def plot_activations(params: Any, init_params: Any = None, *, path: str | pathlib.Path, version: str = "A",
                     polycom: str = "polynorm", x_max: float = 3.0, title: str = "") -> list[str]:
  """One panel per activation module found in `params` (learned: solid, init: dashed); returns the paths."""
  learned = find_activations(params)
  if not learned:
    raise ValueError("no learnable activation (rational, group rational, PolyCom, Swish-β) in these params")
  init = find_activations(init_params) if init_params is not None else {}
  x = np.linspace(-x_max, x_max, 401)
  ncols = min(4, len(learned))
  nrows = math.ceil(len(learned) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
  for ax, (name, leaves) in zip(axes.ravel(), learned.items()):
    kind, ys = curves(leaves, x, version=version, polycom=polycom)
    for i, y in enumerate(ys):
      ax.plot(x, y, color=f"C{i % 10}", lw=1.4, label="learned" if i == 0 else None)
    if name in init:
      for i, y in enumerate(curves(init[name], x, version=version, polycom=polycom)[1]):
        ax.plot(x, y, color=f"C{i % 10}", lw=1.0, ls="--", alpha=0.7, label="init" if i == 0 else None)
    ax.set_title(f"{name}\n{kind}", fontsize=8)
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    ax.legend(fontsize=7)
  for ax in axes.ravel()[len(learned):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return list(learned)


def _config_hints(model_cfg: dict) -> tuple[str, str]:
  """(rational version, polycom kind) named anywhere in the model config; defaults A and polynorm."""
  text = json.dumps(model_cfg)
  versions = {v for k, v in _walk(model_cfg) if k == "version"}
  poly = [p for p in POLYCOM if f'"{p}"' in text]
  return (versions.pop() if len(versions) == 1 else "A"), (poly[0] if len(poly) == 1 else "polynorm")


def _walk(d: Any):
  if isinstance(d, dict):
    for k, v in d.items():
      yield k, v
      yield from _walk(v)


def load_run(run_dir: str | pathlib.Path) -> tuple[dict, dict, dict, int]:
  """(learned params, init activation params, config dict, step) of a `python -m train` workdir."""
  import jax
  import orbax.checkpoint as ocp
  from flax import nnx

  import models
  from train import config as config_lib

  run_dir = pathlib.Path(run_dir).resolve()
  manager = ocp.CheckpointManager(run_dir / "checkpoints", item_handlers={"state": ocp.StandardCheckpointHandler()})
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {run_dir / 'checkpoints'}")
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  manager.close()
  config = config_lib.load(str(run_dir / "config.json"))

  def init_activations():  # under jit, every other parameter's init is dead code
    model = models.build(config.model, rngs=nnx.Rngs(config.seed))
    found = find_activations(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {name: leaves for name, leaves in found.items()}

  init = jax.jit(init_activations)()
  params = jax.tree.map(np.asarray, state["params"])
  init_params = {}
  for name, leaves in init.items():  # re-nest under the same paths find_activations reports
    node = init_params
    for part in name.split("/"):
      node = node.setdefault(part, {})
    node.update(jax.tree.map(np.asarray, leaves))
  return params, init_params, config.to_dict(), step


def plot_run(run_dir: str | pathlib.Path, out: str | pathlib.Path | None = None, x_max: float = 3.0) -> pathlib.Path:
  """Plot a run's latest checkpoint against its init; returns the PNG path (default RUN_DIR/activations.png)."""
  params, init_params, config, step = load_run(run_dir)
  version, polycom = _config_hints(config.get("model", {}))
  out = pathlib.Path(out or pathlib.Path(run_dir) / "activations.png")
  plot_activations(params, init_params, path=out, version=version, polycom=polycom, x_max=x_max,
                   title=f"{pathlib.Path(run_dir).name}: step {step} (solid) vs init (dashed)")
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run_dir")
  parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/activations.png)")
  parser.add_argument("--range", type=float, default=3.0, help="plot x in [-range, range]")
  args = parser.parse_args()
  print(f"-> {plot_run(args.run_dir, args.out, args.range)}")


if __name__ == "__main__":
  main()
