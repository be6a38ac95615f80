"""Router auxiliary losses and routing statistics (pure functions, fp32).

load_balancing_loss (Switch Transformer, eq. 4): E * sum_e f_e * p_e, with f_e the fraction of
  routed assignments that chose expert e and p_e the mean router probability of e. Equals 1
  under perfectly uniform routing, E when all tokens pick the same expert.
router_z_loss (ST-MoE, eq. 5): mean over tokens of logsumexp(logits)^2; keeps logits small.
router_entropy: mean over tokens of the entropy of the router distribution (nats).
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
