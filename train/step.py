"""The jitted train and eval steps: pure functions of (state, batch).

Loss = task loss (weighted over batch["weights"]: padding and, for packed text, targets in another
document than their input weigh 0) + every AuxLoss the layers sowed.
Gradient accumulation scans over `grad_accum` strided micro-batches, normalising by the whole
batch's weight so the update equals the one-big-batch update; layers' `end_step` hooks run once
per step, after the last micro-batch.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from layers.aux import AuxLoss, LayerMetric, end_step
from train.optim import global_norm

LOSSES = ("xent", "mse")
MODEL_FIELDS = ("segment_ids", "positions")  # [B, T] int32 of packed text (train/data/packing.py)


def task_sums(outputs: jax.Array, batch: dict, loss: str, label_smoothing: float = 0.0) -> dict:
  """Weighted sums: {"loss", "loss_sq" (of the squared per-position losses, for a standard error), "weight",
  "correct"}; loss in fp32.

  xent: outputs [..., C] logits, targets [...] int (or [..., C] soft labels); mse: outputs and
  targets [..., out]. weights [...] (0 masks a position out).
  """
  w = batch["weights"].astype(jnp.float32)
  out = outputs.astype(jnp.float32)
  targets = batch["targets"]
  if loss == "xent":
    n = out.shape[-1]
    soft = targets if jnp.issubdtype(targets.dtype, jnp.floating) else jax.nn.one_hot(targets, n)
    if label_smoothing:
      soft = soft * (1 - label_smoothing) + label_smoothing / n
    per = -jnp.sum(soft * jax.nn.log_softmax(out, axis=-1), axis=-1)
    correct = (jnp.argmax(out, -1) == jnp.argmax(soft, -1)).astype(jnp.float32)
  elif loss == "mse":
    per = jnp.mean(jnp.square(out - targets.astype(jnp.float32)).reshape(*w.shape, -1), axis=-1)
    correct = jnp.zeros_like(per)
  else:
    raise ValueError(f"train.loss must be one of {LOSSES}, got {loss!r}")
  return {"loss": jnp.sum(w * per), "loss_sq": jnp.sum(w * per * per), "weight": jnp.sum(w),
          "correct": jnp.sum(w * correct)}


def _by_name(state: nnx.State, reduce: Callable) -> dict[str, jax.Array]:
  """Group sown values by their sow name (last path element) across layers."""
  groups: dict[str, list] = {}
  for path, var in nnx.to_flat_state(state):
    values = var.get_value() if hasattr(var, "get_value") else var.value
    values = values if isinstance(values, tuple) else (values,)
    groups.setdefault(str(path[-1]), []).extend(jnp.asarray(v, jnp.float32) for v in values)
  return {k: reduce(jnp.stack(v)) for k, v in groups.items()}


def forward(graphdef, params, rest, batch: dict, *, deterministic: bool = False, top_k: int | None = None):
  """Model outputs for batch["inputs"], plus the aux losses (summed per name) and layer metrics (averaged
  per name). The batch's MODEL_FIELDS it has (packed text) go to the model as keywords.

  deterministic=True (evaluation) switches off training-only noise (dropout, rational version D,
  router jitter) in every layer that has a `deterministic` view. top_k: the `top_k` view, the number of
  experts of every layer that takes one (SMoE-Dropout evaluated at several k).
  """
  model = nnx.merge(graphdef, params, rest)
  if deterministic:
    model = nnx.view(model, deterministic=True, raise_if_not_found=False)
  if top_k is not None:
    model = nnx.view(model, top_k=top_k)
  fields = {k: batch[k] for k in MODEL_FIELDS if k in batch}
  outputs, aux, metrics = nnx.capture(model, AuxLoss, LayerMetric)(batch["inputs"], **fields)
  _, _, new_rest = nnx.split(model, nnx.Param, ...)
  return (outputs, _by_name(aux, lambda x: jnp.sum(x, axis=0)),
          _by_name(metrics, lambda x: jnp.mean(x, axis=0)), nnx.to_pure_dict(new_rest))


def _end_step(graphdef, params, rest):
  """Layers commit what they gathered over the step's micro-batches (`layers.aux.end_step`)."""
  model = nnx.merge(graphdef, params, rest)
  end_step(model)
  return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])


def _micro(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...] with strided rows, so each device keeps its share of every micro-batch."""
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1), batch)


def all_finite(tree) -> jax.Array:
  """True iff every element of every array in `tree` is finite (no NaN, no inf)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(graphdef, tx: optax.GradientTransformation, lr: optax.Schedule, *, loss: str,
                    grad_accum: int = 1, label_smoothing: float = 0.0,
                    count_tokens: Callable[[dict], jax.Array] | None = None):
  """(state, batch) -> (state, metrics). count_tokens(batch): the batch's real (non-padding) tokens, returned
  as metrics["tokens"] for data that pads (train.data.packing.document_tokens)."""

  def objective(params, rest, mb, total_weight):
    outputs, aux, metrics, rest = forward(graphdef, params, rest, mb)
    sums = task_sums(outputs, mb, loss, label_smoothing)
    aux_total = sum(aux.values(), jnp.float32(0.0)) / grad_accum
    return sums["loss"] / total_weight + aux_total, (sums, aux, metrics, rest)

  grad_fn = jax.grad(objective, has_aux=True)

  def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
    params = state["params"]
    total_weight = jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)
    if grad_accum == 1:
      grads, (sums, aux, metrics, rest) = grad_fn(params, state["rest"], batch, total_weight)
    else:
      def body(carry, mb):
        rest, acc = carry
        g, (sums, aux, metrics, rest) = grad_fn(params, rest, mb, total_weight)
        return (rest, jax.tree.map(jnp.add, acc, g)), (sums, aux, metrics)

      zeros = jax.tree.map(jnp.zeros_like, params)
      (rest, grads), (sums, aux, metrics) = jax.lax.scan(body, (state["rest"], zeros), _micro(batch, grad_accum))
      sums = jax.tree.map(lambda x: jnp.sum(x, 0), sums)
      aux = jax.tree.map(lambda x: jnp.mean(x, 0), aux)
      metrics = jax.tree.map(lambda x: jnp.mean(x, 0), metrics)
    rest = _end_step(graphdef, params, rest)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    step = state["step"]
    loss_value = sums["loss"] / total_weight
    grad_norm = global_norm(grads)
    # A step is good only if its loss, its gradients and the parameters it produced are all finite.
    finite = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm) & all_finite(params)
    out = {
      "loss": loss_value,
      "accuracy": sums["correct"] / total_weight,
      "grad_norm": grad_norm,
      "lr": lr(step),
      **{f"aux/{k}": v for k, v in aux.items()},
      **{f"layers/{k}": v for k, v in metrics.items()},
    }
    if count_tokens is not None:
      out["tokens"] = count_tokens(batch)
    new_state = {
      "params": params, "opt_state": opt_state, "rest": rest, "step": step + 1,
      "first_bad_step": jnp.where(~finite & (state["first_bad_step"] < 0), step + 1, state["first_bad_step"]),
    }
    return new_state, out

  return train_step


def make_eval_step(graphdef, *, loss: str, top_ks: tuple[int, ...] = ()):
  """(state, batch) -> weighted sums; for each k of `top_ks` also under the view top_k=k, as "<sum>/top_k=k"."""

  def sums(state: dict, batch: dict, top_k: int | None = None) -> dict:
    outputs, _, _, _ = forward(graphdef, state["params"], state["rest"], batch, deterministic=True, top_k=top_k)
    return task_sums(outputs, batch, loss)

  def eval_step(state: dict, batch: dict) -> dict:
    out = sums(state, batch)
    for k in top_ks:
      out.update({f"{name}/top_k={k}": v for name, v in sums(state, batch, k).items()})
    return out

  return eval_step
