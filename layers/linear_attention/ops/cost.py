"""Forward FLOPs per step and head of the chunkwise-parallel recurrences (chunk size C, state K x V).

Gated linear recurrences (linear_attn, simple_gla, gla):
  intra-chunk scores q.k over C keys 2CK, scores @ v 2CV, inter-chunk q @ S 2KV, state update k^T v 2KV.
Delta rules (delta_rule, gated_delta_rule, kda; gated_delta_product per Householder step) add the WY/UT
transform: A = (beta k) k^T 2CK, the triangular solve ~C^2, w = T (beta k) 2CK, u = T (beta v) 2CV, u - w S 2KV.
DPLR (dplr_delta_rule) adds to the linear form the scores q.b, a.k, a.b 6CK, W = T (a exp(b)) 2CK, the
triangular solve ~C^2, u = T (A_ak v) 4CV, (q.b) @ U 2CV, U = u + W S 2KV and b^T U 2KV.
Elementwise gate arithmetic is O(K) per step and left out.
"""

RECURRENCES = ("linear", "delta", "dplr")


def recurrence_flops_per_token(kind: str, chunk: int, k: int, v: int) -> float:
  if kind not in RECURRENCES:
    raise ValueError(f"recurrence kind must be one of {RECURRENCES}, got {kind!r}")
  linear = 2 * chunk * (k + v) + 4 * k * v
  if kind == "linear":
    return float(linear)
  if kind == "delta":
    return float(linear + 4 * chunk * k + 2 * chunk * v + chunk * chunk + 2 * k * v)
  return float(linear + 8 * chunk * k + 6 * chunk * v + chunk * chunk + 4 * k * v)
