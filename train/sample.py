"""python -m train.sample --workdir DIR --prompt TEXT [--max_new_tokens N --temperature T --seed S]

Continues a prompt with the language model a run trained (parameters of its latest checkpoint), decoding
token by token through each mixer's cache (models.lm.generate). Text is tokenised as the run's data was
(bytes, or data.spm_model); runs on token-id tasks such as MQAR take --prompt_ids 3,17,5 instead.
"""

import argparse
import json
import sys

import jax
import jax.numpy as jnp
from etils import epath

import models
from models.lm import generate
from train.data.tokenizer import get_tokenizer

TEXT_SOURCES = ("text", "tfds_text")


def sample(workdir: str, prompt: str | None = None, *, prompt_ids: list[int] | None = None,
           max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0) -> dict:
  """{"prompt_ids", "ids" (the continuation's), "text" (decoded, for text runs)} for one prompt."""
  config = json.loads((epath.Path(workdir) / "config.json").read_text())
  if config["model"]["kind"] != "lm":
    raise ValueError(f"{workdir} trained a {config['model']['kind']!r} model; sampling needs a language model (lm)")
  data = config["data"]
  tokenizer = get_tokenizer(data.get("spm_model", "")) if data["name"] in TEXT_SOURCES else None
  if prompt_ids is None:
    if tokenizer is None:
      raise ValueError(f"{workdir} trained on {data['name']!r} token ids, not text: pass --prompt_ids 3,17,5")
    prompt_ids = [int(i) for i in tokenizer.encode(prompt)]
  if not prompt_ids:
    raise ValueError("the prompt is empty; generation needs at least one token to start from")
  vocab = config["model"]["vocab_size"]
  if not all(0 <= i < vocab for i in prompt_ids):
    raise ValueError(f"prompt ids must lie in [0, {vocab}) (model.vocab_size), got {prompt_ids}")
  model = models.load(workdir)
  tokens = generate(model, jnp.asarray([prompt_ids], jnp.int32), max_new_tokens, temperature=temperature,
                    rng=jax.random.key(seed))
  ids = [int(i) for i in jax.device_get(tokens)[0, len(prompt_ids):]]
  return {"prompt_ids": prompt_ids, "ids": ids, "text": tokenizer.decode(ids) if tokenizer else None}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m train.sample", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a run directory (python -m train --workdir)")
  prompt = parser.add_mutually_exclusive_group(required=True)
  prompt.add_argument("--prompt", help="text, tokenised as the run's data")
  prompt.add_argument("--prompt_ids", help="comma-separated token ids")
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    out = sample(args.workdir, args.prompt,
                 prompt_ids=[int(i) for i in args.prompt_ids.split(",")] if args.prompt_ids else None,
                 max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(args.prompt + out["text"] if out["text"] is not None else ",".join(map(str, out["ids"])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
