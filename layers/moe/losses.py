"""Router auxiliary losses and routing statistics (pure functions, fp32).

load_balancing_loss (Switch Transformer, eq. 4): E * sum_e f_e * p_e, with f_e the fraction of
  routed assignments that chose expert e and p_e the mean router probability of e. Equals 1
  under perfectly uniform routing, E when all tokens pick the same expert.
router_z_loss (ST-MoE, eq. 5): mean over tokens of logsumexp(logits)^2; keeps logits small.
router_entropy: mean over tokens of the entropy of the router distribution (nats).
sequence_balance_loss (DeepSeek-V3): the load-balancing loss per sequence, averaged over sequences.
max_violation (MaxVio, Wang et al. 2024): how far the busiest expert is above the mean load.
"""

import jax
import jax.numpy as jnp


def expert_load(experts: jax.Array, n_experts: int) -> jax.Array:
  """Fraction of assignments per expert. experts [N, k] -> [E], sums to 1."""
  counts = jnp.bincount(experts.reshape(-1), length=n_experts).astype(jnp.float32)
  return counts / experts.size


def load_balancing_loss(load: jax.Array, probs: jax.Array) -> jax.Array:
  """E * sum_e load_e * mean_n probs[n, e].  load [E], probs [N, E] -> scalar"""
  n_experts = probs.shape[-1]
  return n_experts * jnp.sum(load * jnp.mean(probs.astype(jnp.float32), axis=0))


def router_z_loss(logits: jax.Array) -> jax.Array:
  """mean_n logsumexp(logits[n])^2.  logits [N, E] -> scalar"""
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)))


def router_entropy(probs: jax.Array) -> jax.Array:
  """mean_n -sum_e p log p.  probs [N, E] -> scalar"""
  p = probs.astype(jnp.float32)
  return jnp.mean(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1))


def sequence_balance_loss(experts: jax.Array, probs: jax.Array) -> jax.Array:
  """DeepSeek-V3's sequence-wise balance loss: the Switch loss of each sequence, averaged over sequences.

  experts [S, T, k] chosen experts, probs [S, T, E] per-token distributions (normalised scores) -> scalar.
  Per sequence, E * sum_e f_e P_e with f_e its fraction of the sequence's assignments, P_e its mean probability.

    >>> float(sequence_balance_loss(jnp.array([[[0], [1]]]), jnp.full((1, 2, 2), 0.5)))  # balanced: 1
    1.0
  """
  n_experts = probs.shape[-1]
  return jnp.mean(jax.vmap(lambda e, p: load_balancing_loss(expert_load(e, n_experts), p))(experts, probs))


def max_violation(load: jax.Array) -> jax.Array:
  """max_e load_e / mean_e load_e - 1 (MaxVio, Wang et al. 2024): 0 when balanced.  load [E] -> scalar

    >>> float(max_violation(jnp.array([0.5, 0.25, 0.25, 0.0])))
    1.0
  """
  load = load.astype(jnp.float32)
  return jnp.max(load) / jnp.mean(load) - 1.0
