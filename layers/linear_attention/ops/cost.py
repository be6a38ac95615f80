"""Forward FLOPs per token and head of the chunkwise-parallel recurrences (chunk size C, state K x V).

Gated linear recurrences (linear_attn, simple_gla, gla):
  intra-chunk scores q.k over C keys 2CK, scores @ v 2CV, inter-chunk q @ S 2KV, state update k^T v 2KV.
Delta rules (delta_rule, gated_delta_rule) add the WY/UT transform: A = (beta k) k^T 2CK, the
triangular solve ~C^2, w = T (beta k) 2CK, u = T (beta v) 2CV, u - w S 2KV.
Elementwise gate arithmetic is O(K) per token and left out.
"""

RECURRENCES = ("linear", "delta")


def recurrence_flops_per_token(kind: str, chunk: int, k: int, v: int) -> float:
  if kind not in RECURRENCES:
    raise ValueError(f"recurrence kind must be one of {RECURRENCES}, got {kind!r}")
  linear = 2 * chunk * (k + v) + 4 * k * v
  if kind == "linear":
    return float(linear)
  return float(linear + 4 * chunk * k + 2 * chunk * v + chunk * chunk + 2 * k * v)
