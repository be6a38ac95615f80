"""Packed documents: segment_ids / positions / weights of concat and first_fit on a hand-checkable corpus,
the leaky baseline (document_masking off) equals plain concat-then-split, iterator state, config checks."""

import json
import logging
import signal

import grain
import jax
import numpy as np
import pytest

from tests.foundation_configs import tiny_lm
from train import checkpoint, loop, metrics
from train import config as config_lib
from train.config import ConfigError
from train.data import pipeline
from train.data.packing import document_tokens, pack
from train.validate import validate

# Tokens name their document: 1x = document 1, ... EOS (0) ends each. Lengths 3, 1 (just EOS), 9, 2; rows hold
# seq_len + 1 = 5 tokens, so document 3 is longer than a row.
DOCS = [[11, 12, 0], [0], [31, 32, 33, 34, 35, 36, 37, 38, 0], [41, 0]]


def _rows(packing: str, masking: bool = True, rows: int = 2) -> list[dict]:
  docs = grain.MapDataset.source([{"tokens": np.asarray(d, np.int32)} for d in DOCS]).to_iter_dataset()
  return [{k: v.tolist() for k, v in ex.items()} for ex in pack(docs, 4, packing=packing, masking=masking, rows=rows)]


def test_concat_rows_know_their_documents():
  # stream 11 12 0 | 0 | 31 .. 38 0 | 41 0, cut into rows of 5: [11 12 0 0 31] [32 33 34 35 36] [37 38 0 41 0]
  assert _rows("concat") == [
    dict(inputs=[11, 12, 0, 0], targets=[12, 0, 0, 31], segment_ids=[1, 1, 1, 2], positions=[0, 1, 2, 0],
         weights=[1, 1, 0, 0]),  # EOS of doc 1 -> doc 2 and doc 2's lone EOS -> doc 3 are skipped
    dict(inputs=[32, 33, 34, 35], targets=[33, 34, 35, 36], segment_ids=[1, 1, 1, 1], positions=[0, 1, 2, 3],
         weights=[1, 1, 1, 1]),  # the rest of doc 3: a segment of its own, positions from 0
    dict(inputs=[37, 38, 0, 41], targets=[38, 0, 41, 0], segment_ids=[1, 1, 1, 2], positions=[0, 1, 2, 0],
         weights=[1, 1, 0, 1]),
  ]


def test_first_fit_packs_whole_documents_and_splits_long_ones():
  # two rows at a time; doc 3 (9 tokens) becomes [31 .. 35] and [35 .. 38 0] (35 is both the last input-side
  # token of one piece and the first of the next, so 35 -> 36 is still trained); the rest is padding (segment 0)
  assert _rows("first_fit") == [
    dict(inputs=[11, 12, 0, 0], targets=[12, 0, 0, 0], segment_ids=[1, 1, 1, 2], positions=[0, 1, 2, 0],
         weights=[1, 1, 0, 0]),
    dict(inputs=[31, 32, 33, 34], targets=[32, 33, 34, 35], segment_ids=[1, 1, 1, 1], positions=[0, 1, 2, 3],
         weights=[1, 1, 1, 1]),
    dict(inputs=[35, 36, 37, 38], targets=[36, 37, 38, 0], segment_ids=[1, 1, 1, 1], positions=[0, 1, 2, 3],
         weights=[1, 1, 1, 1]),
    dict(inputs=[41, 0, 0, 0], targets=[0, 0, 0, 0], segment_ids=[1, 1, 0, 0], positions=[0, 1, 0, 0],
         weights=[1, 0, 0, 0]),
  ]


def test_masking_off_is_the_leaky_baseline():
  """concat: exactly the stream cut into windows with every target weighted (the batches before packing
  knew documents); first_fit: the same rows as with masking, only padding unweighted."""
  stream = np.concatenate(DOCS)
  concat = _rows("concat", masking=False)
  assert [sorted(r) for r in concat] == [["inputs", "targets", "weights"]] * 3
  for i, r in enumerate(concat):
    window = stream[5 * i:5 * i + 5].tolist()
    assert r == dict(inputs=window[:-1], targets=window[1:], weights=[1, 1, 1, 1])
  first_fit = _rows("first_fit", masking=False)
  assert [r["inputs"] for r in first_fit] == [r["inputs"] for r in _rows("first_fit")]
  assert [r["weights"] for r in first_fit] == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
  assert all("segment_ids" not in r and "positions" not in r for r in first_fit)


def test_first_fit_state_resumes_mid_round():
  docs = grain.MapDataset.source([{"tokens": np.asarray(d, np.int32)} for d in DOCS]).repeat(None)
  it = iter(pack(docs.to_iter_dataset(), 4, packing="first_fit", masking=True, rows=2))
  for _ in range(3):  # the middle of the second packing round
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(5)]
  again = iter(pack(docs.to_iter_dataset(), 4, packing="first_fit", masking=True, rows=2))
  again.set_state(state)
  for w in want:
    got = next(again)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


@pytest.fixture(scope="module")
def short_docs(tmp_path_factory):
  """tiny_lm on byte-level text from 60 short files (1 to 300 bytes): rows of 64 bytes hold several documents."""
  corpus = tmp_path_factory.mktemp("corpus")
  for i in range(60):
    (corpus / f"doc{i:02d}.txt").write_text("".join(chr(97 + (i + j) % 26) for j in range(1 + i * 37 % 300)))
  c = tiny_lm("text")
  c.data.update(dict(data_dir=str(tmp_path_factory.mktemp("tfds")), corpus=str(corpus), seq_len=64))
  c.data.pattern = "*.txt"
  return c


@pytest.fixture(scope="module")
def text_cfg(short_docs):
  return short_docs.data


def _stacked(cfg, n: int = 4) -> dict:
  """The first n batches of 8 rows, stacked."""
  it = pipeline.build(cfg, split="train", seed=0, train=True, batch_size=8)
  batches = [next(it) for _ in range(n)]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("packing", ["concat", "first_fit"])
def test_text_batches_carry_segments_and_positions(text_cfg, packing):
  cfg = text_cfg.copy_and_resolve_references()
  cfg.packing = packing
  b = _stacked(cfg)
  assert sorted(b) == ["inputs", "positions", "segment_ids", "targets", "weights"]
  for k in ("inputs", "targets", "segment_ids", "positions"):
    assert b[k].shape == (32, 64) and b[k].dtype == np.int32, k
  seg, pos, w = b["segment_ids"], b["positions"], b["weights"]
  starts = np.concatenate([np.ones((32, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  counted = np.where(starts, 0, np.concatenate([np.zeros((32, 1), int), pos[:, :-1] + 1], 1))
  np.testing.assert_array_equal(pos, np.where(seg > 0, counted, 0))  # from 0 in each document; padding 0
  ends = np.concatenate([seg[:, 1:] != seg[:, :-1], np.zeros((32, 1), bool)], axis=1)  # last input of a segment
  assert ends.sum() > 0 and (w[ends] == 0).all() and (w[seg == 0] == 0).all()
  assert (packing == "concat") == (seg > 0).all()  # only first_fit pads
  assert document_tokens(b) == (seg > 0).sum()
  cfg.document_masking = False
  leaky = _stacked(cfg)
  assert sorted(leaky) == ["inputs", "targets", "weights"]
  np.testing.assert_array_equal(leaky["inputs"], b["inputs"])
  # the leaky baseline weights every target but padding: at least what masking keeps, the boundaries too
  assert (leaky["weights"] >= w).all() and leaky["weights"].sum() > w.sum() and (leaky["weights"][seg == 0] == 0).all()
  if packing == "concat":
    assert (leaky["weights"] == 1).all()
  assert document_tokens(leaky) == (seg > 0).sum()  # the same rows: padding counted out from the weights alone


def test_unknown_packing_is_a_config_error():
  c = tiny_lm("text")
  c.data.packing = "best_fit"
  with pytest.raises(ConfigError, match=r"data.packing='best_fit'; choose one of \('concat', 'first_fit'\)"):
    validate(c)


# --- the LM on packed rows ---------------------------------------------------------------------------------

# Documents no longer than a row (13 tokens = seq_len + 1 fills one), of 1 to 13 tokens; first_fit over 3 rows.
LM_DOCS = [np.random.default_rng(i).integers(1, 64, n).astype(np.int32) for i, n in
           enumerate([5, 1, 13, 3, 7, 2, 9, 4, 6])]


def test_lm_loss_on_packed_rows_is_the_token_weighted_mean_of_documents_alone():
  """attention, Gated DeltaNet and sliding-window attention in one LM: the eval step's loss on packed rows ==
  the loss of each document run alone (its own row from position 0), token-weighted; the rows seen as single
  sequences (the leaky view) score differently."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from models.lm import LM
  from train.step import make_eval_step

  cfg = tiny_lm().model
  cfg.blocks = "(attention, swiglu) + (gated_delta_net, swiglu) + (swa, mlp)"
  model = LM(cfg, rngs=nnx.Rngs(0))
  docs = grain.MapDataset.source([{"tokens": d} for d in LM_DOCS]).to_iter_dataset()
  rows = list(pack(docs, 12, packing="first_fit", masking=True, rows=3))
  batch = {k: jnp.stack([r[k] for r in rows]) for k in rows[0]}
  assert batch["inputs"].shape == (len(rows), 12) and (batch["segment_ids"].max(1) > 1).any()  # shared rows

  alone = np.zeros((len(LM_DOCS), 12), np.int32)  # each document in a row of its own, right-padded (causal)
  for i, d in enumerate(LM_DOCS):
    alone[i, :len(d) - 1] = d[:-1]
  # one forward for the documents alone and the packed rows seen as single sequences (the leaky view)
  logp = jax.nn.log_softmax(nnx.jit(lambda m, x: m(x))(model, jnp.concatenate([alone, batch["inputs"]])), -1)
  nll = [-sum(float(logp[i, t, d[t + 1]]) for t in range(len(d) - 1)) for i, d in enumerate(LM_DOCS)]
  n_targets = sum(len(d) - 1 for d in LM_DOCS)
  leaky_logp = np.take_along_axis(np.asarray(logp[len(LM_DOCS):]), np.asarray(batch["targets"])[..., None], -1)
  leaky = -float(np.sum(leaky_logp[..., 0] * np.asarray(batch["weights"])))

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}
  sums = jax.jit(make_eval_step(graphdef, loss="xent"))(state, batch)
  assert float(sums["weight"]) == n_targets
  np.testing.assert_allclose(float(sums["loss"]) / n_targets, sum(nll) / n_targets, rtol=2e-5)
  assert abs(leaky - sum(nll)) / sum(nll) > 2e-4  # 10x the tolerance: the test sees a leak (random init: small)


def test_first_fit_masked_text_run_resumes_bit_exactly_after_a_kill(short_docs, tmp_path, capsys, caplog):
  """... and its tokens_per_sec counts the batches' document tokens, padding left out; the run compiles its train
  step once (the FLOP count of the step statistics reuses the executable)."""
  from tests.test_train_run import _launch, _wait_for_step

  c = short_docs.copy_and_resolve_references()
  c.data.packing = "first_fit"
  c.model.blocks = "(attention, swiglu)"  # one layer: less to compile
  c.train.update(dict(steps=8, ckpt_every=2, eval_every=8, tensorboard=False))  # one eval, at the end
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    loop.run(c, str(tmp_path / "whole"))
  assert sum("Finished XLA compilation of jit(train_step)" in r.getMessage() for r in caplog.records) == 1
  it = pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size)
  real = [int((next(it)["segment_ids"] > 0).sum()) for _ in range(8)]
  assert min(real) < c.data.batch_size * c.data.seq_len  # padded
  np.testing.assert_allclose([r["tokens_per_sec"] * r["step_time"] for r in metrics.read(tmp_path / "whole")], real,
                             rtol=1e-9)
  config_lib.save(c, str(tmp_path / "cfg"))
  workdir = tmp_path / "killed"
  proc = _launch(tmp_path / "cfg" / "config.json", workdir, delay=0.3)
  _wait_for_step(workdir, 5, proc, checkpoint=True)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  step = checkpoint.Checkpointer(str(workdir / "checkpoints"), every=2, keep=3).latest_step()
  assert 2 <= step < 8
  data_state = (workdir / "checkpoints" / str(step) / "data" / "process_0-of-1.json").read_text()
  assert "next_row" in data_state and "next_index_in_buffer" in data_state  # the packer's and splitter's state
  loop.run(c, str(workdir))
  assert "resumed from" in capsys.readouterr().err
  a = [(r["step"], r["loss"], r.get("eval_loss")) for r in metrics.read(tmp_path / "whole")]
  b = [(r["step"], r["loss"], r.get("eval_loss")) for r in metrics.read(workdir)]
  assert a == b and len(a) == 8


def test_packing_experiment_grid_configs_and_table(tmp_path):
  from experiments import packing as study
  from train import sweep

  for spec in ("experiments/packing.py:local,mixer=attention,masking=false", "experiments/packing.py"):
    c = config_lib.load(spec)
    validate(c, num_devices=1)
    assert c.data.packing == "first_fit"
  runs = sweep.expand("experiments/packing.py:local", str(tmp_path))
  assert len(runs) == 8 and {(r.overrides["data.document_masking"], r.overrides["seed"]) for r in runs} == {
    (True, 0), (True, 1), (False, 0), (False, 1)}
  rows = [dict(mixer=m, masking=k, seed=s, alone=a + s, leaky_context=a + s + 0.5)
          for (m, k, a) in [("attention", True, 1.0), ("attention", False, 1.3), ("gated_delta_net", True, 1.1),
                            ("gated_delta_net", False, 1.2)] for s in (0, 1)]
  lines = study.table(rows).splitlines()
  assert lines[2] == "masked | attention | 1.5000 ± 0.7071 | 2.0000 ± 0.7071"
  assert "attention - gated_delta_net, trained leaky | 0.1000 ± 0.0000" in lines
  assert "attention: trained leaky - trained masked | 0.3000 ± 0.0000" in lines
