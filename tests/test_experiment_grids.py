"""Every experiment's sweep grid keeps the scale its ARG names: at paper scale the paper's shapes, data,
bf16 compute and FSDP; with `local` the CPU shapes and embedded data."""

import re

import pytest

from models.block_pattern import parse
from train import sweep, validate
from train.config import ConfigError

# spec: (d_model, layer counts, data source, number of runs) as the papers have them
PAPER = {
  "experiments/gla.py": (1024, {24}, "tfds_text", 3),
  "experiments/gla.py:size=1.3b": (2048, {24}, "tfds_text", 3),
  "experiments/delta_net.py:size=1.3b": (2048, {24}, "tfds_text", 5),
  "experiments/gated_delta_net.py": (1024, {21, 24}, "tfds_text", 7),
  "experiments/hybrid.py": (1024, {24}, "tfds_text", 10),
  "experiments/moe.py": (1024, {24}, "tfds_text", 11),
  "experiments/mom.py": (1024, {24}, "tfds_text", 2),
  "experiments/polycom.py": (2048, {24}, "tfds_text", 3),
  "experiments/kat.py": (192, {12}, "tfds_images", 7),
  "experiments/karat.py": (192, {12}, "tfds_images", 4),
  "experiments/packing.py": (768, {12}, "tfds_text", 12),
}


@pytest.mark.parametrize("spec", sorted(PAPER))
def test_paper_grid_keeps_paper_shapes_and_data(spec, tmp_path, capsys):
  d_model, layers, data, n_runs = PAPER[spec]
  assert sweep.main(["--config", spec, "--root", str(tmp_path), "--dry-run", "--no-sizes"]) == 0
  out = capsys.readouterr().out.splitlines()
  listed = [line for line in out if line.startswith("new")]
  shown = [re.search(r"(\d+) layers d_model=(\d+) bfloat16; data (\w+)", line) for line in out if "; data" in line]
  runs = sweep.expand(spec, str(tmp_path))
  assert len(listed) == len(shown) == len(runs) == n_runs
  assert all(int(m[1]) in layers and (int(m[2]), m[3]) == (d_model, data) for m in shown), out
  for run in runs:
    c = sweep.resolve(spec, run.overrides)
    assert (c.model.d_model, c.data.name) == (d_model, data), run.name
    assert len(parse(c.model.blocks)) in layers, (run.name, c.model.blocks)
    assert (c.model.dtype, c.model.param_dtype, c.model.remat) == ("bfloat16", "float32", "full")
    assert c.mesh.shape.to_dict() == {"data": 1, "fsdp": -1, "tensor": 1, "expert": 1, "sequence": 1}


@pytest.mark.parametrize("spec", sorted({s.split(":")[0] for s in PAPER}))
def test_local_grid_keeps_cpu_shapes_and_embedded_data(spec):
  for run in sweep.expand(f"{spec}:local"):
    c = sweep.resolve(f"{spec}:local", run.overrides)
    assert c.model.d_model <= 128 and len(parse(c.model.blocks)) <= 4, (run.name, c.model.d_model, c.model.blocks)
    assert c.data.name in ("text", "mqar", "mnist1d") and (c.model.dtype, c.model.remat) == ("float32", "none")


def test_paper_text_run_needs_its_tokenizer():
  c = sweep.resolve("experiments/gla.py", {})
  with pytest.raises(ConfigError, match=r"data.spm_model is empty.*vocab_size=32000.*set data.spm_model="):
    validate.check_vocab(c)
