"""Routers: which experts each token goes to, and with what weight.

Token choice (Switch, GShard, Mixtral, DeepSeek): every token picks its top-k experts by score
(softmax over experts, or independent sigmoids), optionally renormalising the k weights to sum to 1.
Expert choice (Zhou et al. 2022): every expert picks its top-C tokens; balanced by construction,
but a token's experts depend on the other tokens of the batch (not causal).
Fixed random router (SMoE-Dropout): logits from a frozen random projection (and bias), never trained.
All scores are computed in fp32.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from layers.core import make_param

SCORES = ("softmax", "sigmoid")


class TokenChoice(NamedTuple):
  """Top-k assignment of N tokens to E experts."""

  weights: jax.Array  # [N, k] fp32 combine weights
  experts: jax.Array  # [N, k] int32 expert ids, distinct within a row
  probs: jax.Array  # [N, E] fp32 per-token distribution over experts (for the balancing loss)


class ExpertChoice(NamedTuple):
  """Top-C assignment of tokens to each expert."""

  weights: jax.Array  # [E, C] fp32 combine weights
  tokens: jax.Array  # [E, C] int32 token ids chosen by each expert
  probs: jax.Array  # [N, E] fp32 softmax over experts


def expert_probs(logits: jax.Array, score: str) -> jax.Array:
  """Per-token distribution over experts: softmax, or sigmoids normalised to sum to 1.  [N,E] -> [N,E]"""
  logits = logits.astype(jnp.float32)
  if score == "softmax":
    return jax.nn.softmax(logits, axis=-1)
  if score == "sigmoid":
    s = jax.nn.sigmoid(logits)
    return s / jnp.sum(s, axis=-1, keepdims=True)
  raise ValueError(f"unknown router score {score!r}; choose from {SCORES}")


def select_top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """jax.lax.top_k along the last axis: values and int32 indices [..., k] of x [..., n], largest first, ties to
  the lower index. Computed as k passes of a max and the first index holding it: reductions, which a sharded
  step keeps local to each shard of the other axes, where XLA's partitioner all-gathers lax.top_k's operand
  (tokens split over a sequence axis).

    >>> [v.tolist() for v in select_top_k(jnp.array([1.0, 3.0, 3.0, -jnp.inf]), 3)]
    [[3.0, 3.0, 1.0], [1, 2, 0]]
  """
  taken = jnp.zeros(x.shape, bool)
  positions = jnp.arange(x.shape[-1])
  values, indices = [], []
  for _ in range(k):
    best = jnp.max(jnp.where(taken, -jnp.inf, x), axis=-1)
    index = jnp.argmax(~taken & (x == best[..., None]), axis=-1)  # the first untaken one (-inf ties included)
    taken = taken | (positions == index[..., None])
    values.append(best)
    indices.append(index)
  return jnp.stack(values, -1), jnp.stack(indices, -1).astype(jnp.int32)


def top_k_route(logits: jax.Array, top_k: int, *, score: str = "softmax", renormalize: bool = False,
                bias: jax.Array | None = None, n_groups: int = 1, top_groups: int = 1,
                scale: float = 1.0) -> TokenChoice:
  """Token-choice routing. logits [N, E] -> weights, experts [N, k], probs [N, E].

  Scores s are the softmax probabilities or the independent sigmoids of the logits. Selection is the
  top-k of s + bias (`bias` [E]: the auxiliary-loss-free balancing bias, which steers selection only),
  restricted with group-limited routing (DeepSeek-V2/V3) to the `top_groups` best of `n_groups` equal
  groups of experts, a group scored by the sum of its two highest selection scores (its one score for
  groups of one). Weights are the unbiased s of the chosen experts, renormalised over the k chosen
  if `renormalize`, times `scale` (the routed scaling factor).

    >>> r = top_k_route(jnp.array([[2.0, 1.0, 0.0, -1.0]]), 1, bias=jnp.array([0.0, 0.0, 0.0, 9.0]))
    >>> int(r.experts[0, 0]), round(float(r.weights[0, 0]), 4)  # chosen by the bias, weighted by its score
    (3, 0.0321)
  """
  logits = logits.astype(jnp.float32)
  n_experts = logits.shape[-1]
  probs = expert_probs(logits, score)
  scores = probs if score == "softmax" else jax.nn.sigmoid(logits)
  choose = scores if bias is None else scores + jax.lax.stop_gradient(bias.astype(jnp.float32))
  if n_groups > 1:
    grouped = choose.reshape(*choose.shape[:-1], n_groups, n_experts // n_groups)
    group_score = jnp.sum(select_top_k(grouped, min(2, grouped.shape[-1]))[0], axis=-1)  # [N, G]
    best = select_top_k(group_score, top_groups)[1]  # [N, top_groups]
    keep = jnp.any(best[..., :, None] == jnp.arange(n_groups), axis=-2)  # [N, G]
    choose = jnp.where(jnp.repeat(keep, n_experts // n_groups, axis=-1), choose, -jnp.inf)
  experts = select_top_k(choose, top_k)[1]
  weights = jnp.take_along_axis(scores, experts, axis=-1)
  if renormalize:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  return TokenChoice(weights * scale, experts.astype(jnp.int32), probs)


def expert_choice_route(logits: jax.Array, capacity: int) -> ExpertChoice:
  """Expert-choice routing: each expert takes the `capacity` tokens with the highest softmax score.

  logits [N, E] -> weights, tokens [E, C].
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  weights, tokens = jax.lax.top_k(probs.T, capacity)
  return ExpertChoice(weights, tokens.astype(jnp.int32), probs)


def fixed_random_projection(seed: int, d_model: int, n_experts: int) -> tuple[jax.Array, jax.Array]:
  """The frozen projection of the fixed random router, constants of `seed`: kernel [D, E] and bias [E], both
  U(-1/sqrt(D), 1/sqrt(D)), PyTorch's nn.Linear initialisation, as in SMoE-Dropout's code (a frozen nn.Linear)."""
  bound = d_model**-0.5
  kernel_key, bias_key = jax.random.split(jax.random.key(seed))
  kernel = jax.random.uniform(kernel_key, (d_model, n_experts), jnp.float32, -bound, bound)
  return kernel, jax.random.uniform(bias_key, (n_experts,), jnp.float32, -bound, bound)


class Router(nnx.Module):
  """Router logits = x @ W in fp32, plus multiplicative jitter noise in training (Switch).

  kind "learned": W is a parameter [embed, expert]; kind "random": x @ W + b with W, b constants of `seed`
  (`fixed_random_projection`; no parameter, no gradient). Jitter multiplies the input by
  U[1 - jitter, 1 + jitter] while not `deterministic` (set by `model.train()` / `model.eval()` or
  `nnx.view`); it draws from the "jitter" stream of the rngs (falling back to "default").
  """

  def __init__(self, d_model: int, n_experts: int, *, kind: str = "learned", jitter: float = 0.0,
               seed: int = 0, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if kind not in ("learned", "random"):
      raise ValueError(f"unknown router kind {kind!r}; choose 'learned' or 'random'")
    self.kind = kind
    self.seed = seed
    self.d_model, self.n_experts = d_model, n_experts
    self.kernel = (
      make_param(nnx.initializers.normal(stddev=d_model**-0.5), rngs.params(), (d_model, n_experts),
                 param_dtype, ("embed", None))
      if kind == "learned" else None
    )
    self.jitter = jitter
    self.deterministic = False
    self.rngs = rngs.fork() if jitter > 0 else None

  def set_view(self, deterministic: bool | None = None):
    """`nnx.view(model, deterministic=True)` (evaluation) switches the jitter off."""
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(self, x: jax.Array) -> jax.Array:  # [N, D] -> [N, E] fp32
    x = x.astype(jnp.float32)
    if self.jitter > 0 and not self.deterministic:
      stream = self.rngs.jitter if "jitter" in self.rngs else self.rngs.default
      x = x * jax.random.uniform(stream(), x.shape, jnp.float32, 1.0 - self.jitter, 1.0 + self.jitter)
    if self.kernel is None:
      kernel, bias = fixed_random_projection(self.seed, self.d_model, self.n_experts)
      return x @ kernel + bias
    return x @ self.kernel[...].astype(jnp.float32)

  def extra_flops_per_token(self, seq_len: int) -> float:
    """The fixed random projection is a matmul its (absent) parameters do not show."""
    return 2.0 * self.d_model * self.n_experts if self.kernel is None else 0.0
