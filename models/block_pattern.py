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


def parse(spec: str) -> list[tuple[str, str]]:
  """Expand a pattern into one (mixer, ffn) pair per layer."""
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

  def atom() -> list[tuple[str, str]]:
    nonlocal pos
    expect("(")
    if is_name(peek()) and peek(1) == "," and is_name(peek(2)) and peek(3) == ")":
      block = (toks[pos], toks[pos + 2])
      pos += 4
      return [block]
    inner = expr()
    expect(")")
    return inner

  def term() -> list[tuple[str, str]]:
    nonlocal pos
    blocks = atom()
    if peek() == "*":
      pos += 1
      if peek() is None or not peek().isdigit():
        raise error("expected a repeat count after '*'")
      blocks = blocks * int(toks[pos])
      pos += 1
    return blocks

  def expr() -> list[tuple[str, str]]:
    nonlocal pos
    blocks = term()
    while peek() == "+":
      pos += 1
      blocks = blocks + term()
    return blocks

  if not toks:
    raise ValueError("empty block pattern; e.g. '(attention, swiglu) * 4'")
  blocks = expr()
  if pos != len(toks):
    raise error("unexpected trailing tokens")
  if not blocks:
    raise error("no layers")
  return blocks
