"""The block-pattern language: which (token mixer, feed-forward) pair each layer of a model uses.

    "(attention, swiglu) * 4"
    "(gated_delta_net, swiglu) * 3 + (attention, swiglu)"          # 3:1 hybrid
    "((delta_net, swiglu) + (swa, swiglu)) * 6"                      # interleaved, 12 layers

A block is `(mixer, ffn)`; `*` repeats, `+` concatenates, parentheses group. Either name may be
`none` (a layer without that sub-block). Names are registry names or labels defined in
`model.options` with a `layer` key (e.g. options.swa = {layer: "attention", window: 64}).
"""

import re

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


def _tokens(spec: str) -> list[str]:
  out = []
  for num, name, sym in _TOKEN.findall(spec):
    tok = num or name or sym
    if tok.strip():
      out.append(tok)
  return out


Block = tuple[str, str]


def _unit(group: list[Block]) -> list[Block]:
  """The shortest prefix of `group` that, repeated, makes `group`."""
  for k in range(1, len(group)):
    if len(group) % k == 0 and group[:k] * (len(group) // k) == group:
      return group[:k]
  return group


def parse_groups(spec: str) -> list[tuple[list[Block], int]]:
  """The pattern as (group of blocks, repeats) in order: its top-level terms, each group cut to its
  shortest repeating unit and consecutive equal groups merged; the units model.scan_layers scans.

  "(a, s) * 3 + (b, s)" -> [([(a, s)], 3), ([(b, s)], 1)];  "((a, s) + (b, s)) * 6" -> [([(a, s), (b, s)], 6)]
  """
  toks = _tokens(spec)
  pos = 0

  def error(msg: str) -> ValueError:
    return ValueError(f"bad block pattern {spec!r}: {msg} (at token {pos}: {toks[pos:pos + 3]}). "
                      "Syntax: '(mixer, ffn) * N + (mixer, ffn)', parentheses group.")

  def peek(i: int = 0) -> str | None:
    return toks[pos + i] if pos + i < len(toks) else None

  def expect(tok: str) -> None:
    nonlocal pos
    if peek() != tok:
      raise error(f"expected {tok!r}")
    pos += 1

  def is_name(tok: str | None) -> bool:
    return tok is not None and re.fullmatch(r"[A-Za-z_]\w*", tok) is not None

  def atom() -> list[Block]:
    nonlocal pos
    expect("(")
    if is_name(peek()) and peek(1) == "," and is_name(peek(2)) and peek(3) == ")":
      block = (toks[pos], toks[pos + 2])
      pos += 4
      return [block]
    inner = [b for group, n in expr() for b in group * n]
    expect(")")
    return inner

  def term() -> tuple[list[Block], int]:
    nonlocal pos
    blocks, count = atom(), 1
    if peek() == "*":
      pos += 1
      if peek() is None or not peek().isdigit():
        raise error("expected a repeat count after '*'")
      count = int(toks[pos])
      pos += 1
    return blocks, count

  def expr() -> list[tuple[list[Block], int]]:
    nonlocal pos
    terms = [term()]
    while peek() == "+":
      pos += 1
      terms.append(term())
    return terms

  if not toks:
    raise ValueError("empty block pattern; e.g. '(attention, swiglu) * 4'")
  terms = expr()
  if pos != len(toks):
    raise error("unexpected trailing tokens")
  groups: list[tuple[list[Block], int]] = []
  for group, count in terms:
    unit = _unit(group)
    count *= len(group) // len(unit)
    if groups and groups[-1][0] == unit:
      groups[-1] = (unit, groups[-1][1] + count)
    elif count:
      groups.append((unit, count))
  if not groups:
    raise error("no layers")
  return groups


def parse(spec: str) -> list[Block]:
  """Expand a pattern into one (mixer, ffn) pair per layer."""
  return [b for group, count in parse_groups(spec) for b in group * count]
