"""Data sources and the pipeline: MQAR labels, determinism, packing, iterator state, local datasets."""

import numpy as np
import pytest

from tests.foundation_configs import tiny_lm
from train.config import ConfigError
from train.data import pipeline
from train.data.mqar import MQAR
from train.validate import validate


def _mqar(**kw):
  args = dict(vocab_size=64, num_pairs=6, num_queries=4, seq_len=40, num_examples=100, seed=3, split="train")
  return MQAR(**{**args, **kw})


def test_mqar_is_deterministic_and_seeded():
  a, b = _mqar(), _mqar()
  for i in (0, 17, 99):
    for k in ("inputs", "targets", "weights"):
      np.testing.assert_array_equal(a[i][k], b[i][k])
  assert not np.array_equal(a[0]["inputs"], _mqar(seed=4)[0]["inputs"])
  assert not np.array_equal(a[0]["inputs"], _mqar(split="validation")[0]["inputs"])
  assert not np.array_equal(a[0]["inputs"], a[1]["inputs"])


def test_mqar_labels_answer_each_query():
  ds = _mqar()
  for i in range(50):
    ex = ds[i]
    x, y, w = ex["inputs"], ex["targets"], ex["weights"]
    assert x.shape == y.shape == w.shape == (40,)
    keys, values = x[0:12:2], x[1:12:2]
    assert len(set(keys.tolist())) == 6 and keys.max() < 32 and values.min() >= 32
    assert len(set(values.tolist())) == 6
    pairs = dict(zip(keys.tolist(), values.tolist()))
    asked = np.nonzero(w)[0]
    assert len(asked) == 4 and asked.min() >= 12  # queries come after the context
    for t in asked:
      assert x[t] in pairs and y[t] == pairs[x[t]]
    unweighted = np.ones(40, bool)
    unweighted[asked] = False
    np.testing.assert_array_equal(x[1:][unweighted[:-1]], y[:-1][unweighted[:-1]])  # next-token targets elsewhere
    # Answers are targets only: the query region holds query keys and zeros (no elimination shortcut).
    assert set(x[12:].tolist()) <= set(keys.tolist()) | {0}
    assert w.sum() == 4 and set(np.unique(w)) <= {0.0, 1.0}


def test_mqar_rejects_impossible_shapes():
  with pytest.raises(ValueError, match="seq_len"):
    _mqar(seq_len=10)
  with pytest.raises(ValueError, match="num_pairs"):
    _mqar(num_pairs=40)


@pytest.fixture(scope="module")
def text_cfg(tmp_path_factory):
  c = tiny_lm("text")
  c.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return c.data


def test_text_packing_and_shift(text_cfg):
  it = pipeline.build(text_cfg, split="train", seed=0, train=True, batch_size=4)
  b = next(it)
  assert b["inputs"].shape == (4, 32) and b["inputs"].dtype == np.int32
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  assert b["inputs"].max() < 256 and set(np.unique(b["weights"])) <= {0.0, 1.0}  # 0: across documents
  text = bytes(b["inputs"][0].astype(np.uint8)).decode("utf-8", "replace")
  assert text.isprintable() or "\n" in text or "\x00" in text


def test_iterator_state_resumes_exact_batches(text_cfg):
  it = pipeline.build(text_cfg, split="train", seed=5, train=True, batch_size=4)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["inputs"] for _ in range(3)]
  import json

  again = pipeline.build(text_cfg, split="train", seed=5, train=True, batch_size=4)
  again.set_state(json.loads(json.dumps(state)))  # as stored in a checkpoint
  for want in expected:
    np.testing.assert_array_equal(next(again)["inputs"], want)


def test_order_depends_on_seed_and_process_shards_are_disjoint(text_cfg):
  a = next(pipeline.build(text_cfg, split="train", seed=0, train=True, batch_size=4))["inputs"]
  b = next(pipeline.build(text_cfg, split="train", seed=1, train=True, batch_size=4))["inputs"]
  assert not np.array_equal(a, b)
  c = tiny_lm("mqar").data
  p0 = next(pipeline.build(c, split="train", seed=0, train=False, batch_size=4, process_index=0, process_count=2))
  p1 = next(pipeline.build(c, split="train", seed=0, train=False, batch_size=4, process_index=1, process_count=2))
  ds = MQAR(vocab_size=64, num_pairs=4, num_queries=0, seq_len=24, num_examples=512, seed=0, split="train")
  np.testing.assert_array_equal(p0["inputs"][1], ds[2]["inputs"])
  np.testing.assert_array_equal(p1["inputs"][1], ds[3]["inputs"])


def test_validation_split_is_held_out(text_cfg):
  from train.data.local_text_builder import LocalText

  builder = LocalText(corpus="stdlib", max_files=text_cfg.max_files, data_dir=text_cfg.data_dir)
  builder.download_and_prepare()
  train_paths = {r["path"] for r in builder.as_data_source(split="train")}
  val_paths = {r["path"] for r in builder.as_data_source(split="validation")}
  assert train_paths and not (train_paths & val_paths)


def test_text_source_reads_files_another_run_prepared(tmp_path, monkeypatch):
  """Two runs of a sweep start on an unprepared data_dir: the one that waits on the lock while the other
  prepares the files must read them. A TFDS builder made before the files existed keeps empty splits, so the
  run's reading builder is made after preparation (the race that failed one quickstart run)."""
  from train.data import text
  from train.data.local_text_builder import LocalText

  c = tiny_lm("text").data
  c.data_dir = str(tmp_path)
  other_run = LocalText(corpus="stdlib", max_files=c.max_files, data_dir=c.data_dir)
  early = []

  def prepared_by_the_other_run(make_builder, data_dir):
    early.append(make_builder())  # this run's builder while the files do not exist yet
    other_run.download_and_prepare()

  monkeypatch.setattr(text, "prepare", prepared_by_the_other_run)
  docs = text.source(c, split="train", seed=0).docs
  assert len(docs) > 0 and len(docs[0]["tokens"]) > 1
  assert not early[0].info.splits  # what reading through a builder made before preparation would have met


def test_digits_source(tmp_path):
  c = tiny_lm().data
  c.name, c.data_dir = "digits", str(tmp_path)
  b = next(pipeline.build(c, split="train", seed=0, train=True, batch_size=16))
  assert b["inputs"].shape == (16, 8, 8, 1) and b["targets"].shape == (16,)
  assert 0 <= b["targets"].min() and b["targets"].max() <= 9
  assert abs(float(b["inputs"].mean())) < 1.0


def test_missing_tfds_dataset_is_a_clear_error(tmp_path):
  c = tiny_lm("text").data
  c.name = "tfds_text"
  c.tfds_name = "tiny_shakespeare"
  c.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match=r"(?s)tiny_shakespeare.*data_dir=.*tfds build"):
    pipeline.build(c, split="train", seed=0, train=True, batch_size=2)


def test_crop_flip_erase_and_mixing_augmentations():
  from train.data.augment import augment_example, mix_batch, random_erase

  rng = np.random.default_rng(0)
  img = np.arange(4 * 4 * 1, dtype=np.float32).reshape(4, 4, 1) + 1
  flips = [augment_example({"inputs": img}, np.random.default_rng(s), padding=0, flip=True)["inputs"]
           for s in range(20)]
  assert any(np.array_equal(f, img[:, ::-1]) for f in flips) and any(np.array_equal(f, img) for f in flips)
  cropped = augment_example({"inputs": img}, rng, padding=2, flip=False)["inputs"]
  assert cropped.shape == img.shape and set(np.unique(cropped)) <= set(np.unique(img)) | {0.0}
  big = np.full((40, 40, 3), 7.0, np.float32)
  erased = [random_erase(big, np.random.default_rng(s)) != 7.0 for s in range(20)]  # the box is noise
  fractions = [e.all(-1).mean() for e in erased]
  assert all(0.02 * 0.8 <= f <= 1 / 3 * 1.2 for f in fractions) and len(set(fractions)) > 5
  assert all(np.array_equal(e.any(-1), e.all(-1)) for e in erased)  # whole pixels, every channel
  kept = [augment_example({"inputs": big}, np.random.default_rng(s), padding=0, flip=False, erase_prob=0.25)
          for s in range(40)]
  assert 0 < sum(not np.array_equal(k["inputs"], big) for k in kept) < 25  # about a quarter erased
  batch = {"inputs": rng.normal(size=(8, 6, 6, 3)).astype(np.float32), "targets": np.arange(8) % 4,
           "weights": np.ones(8, np.float32)}
  for kw in (dict(mixup_alpha=0.4, cutmix_alpha=0.0), dict(mixup_alpha=0.0, cutmix_alpha=1.0)):
    out = mix_batch(batch, np.random.default_rng(1), num_classes=4, **kw)
    assert out["targets"].shape == (8, 4) and np.allclose(out["targets"].sum(-1), 1.0)
    lam = out["targets"][np.arange(8), batch["targets"]].max()  # own-label weight (partner may share it)
    assert 0.0 <= out["targets"].min() and lam <= 1.0
    if kw["cutmix_alpha"]:  # each pixel comes from the example or its partner, never a blend
      own = np.isclose(out["inputs"], batch["inputs"]).all(-1)
      assert 0 < own.mean() <= 1


def test_augmented_pipeline_resumes_exactly(tmp_path):
  import json

  c = tiny_lm().data
  c.name, c.data_dir = "digits", str(tmp_path)
  c.augment.update(dict(crop_padding=1, flip=True, mixup_alpha=0.2, num_classes=10))
  it = pipeline.build(c, split="train", seed=0, train=True, batch_size=8)
  next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = next(it)
  again = pipeline.build(c, split="train", seed=0, train=True, batch_size=8)
  again.set_state(state)
  got = next(again)
  np.testing.assert_array_equal(got["inputs"], want["inputs"])
  np.testing.assert_array_equal(got["targets"], want["targets"])
  assert want["targets"].shape == (8, 10)
  ev = next(pipeline.build(c, split="validation", seed=0, train=False, batch_size=8))
  assert ev["targets"].shape == (8,)  # no augmentation at eval


def test_read_threads_change_speed_not_batches(tmp_path):
  """In-memory sources default to reading in the loop's thread; a thread pool gives the same batches."""
  c = tiny_lm().data
  c.name, c.data_dir = "digits", str(tmp_path)
  c.augment.update(dict(crop_padding=1, flip=True))
  assert pipeline.read_options(c).num_threads == 0
  batches = {}
  for threads in (0, 2):
    c.read_threads = threads
    it = pipeline.build(c, split="train", seed=1, train=True, batch_size=8)
    batches[threads] = [next(it)["inputs"] for _ in range(3)]
  for a, b in zip(batches[0], batches[2]):
    np.testing.assert_array_equal(a, b)
  assert pipeline.read_options(tiny_lm("text").data).num_threads == 16


def test_resize_center_crop_and_random_resized_crop():
  from train.data import augment

  h, w = 300, 450
  ramp = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :, None], (h, w, 2))  # value = column
  view = augment.resize_center_crop(ramp, 224)  # shorter side -> 256 (x 256/300), centre 224
  assert view.shape == (224, 224, 2)
  np.testing.assert_allclose(view.mean(), (w - 1) / 2, atol=0.5)  # centred: symmetric around the middle
  np.testing.assert_allclose(np.ptp(view[0, :, 0]), 224 * 300 / 256, rtol=0.02)  # 224 px span 262 columns
  rng = np.random.default_rng(0)
  crops = [augment.random_resized_crop(ramp, rng, 32) for _ in range(8)]
  assert all(c.shape == (32, 32, 2) and c.min() >= 0 and c.max() <= w - 1 for c in crops)
  assert len({round(float(c.mean()), 3) for c in crops}) == 8  # a different crop each time
  again = augment.random_resized_crop(ramp, np.random.default_rng(0), 32)
  np.testing.assert_array_equal(again, crops[0])
  thin = np.random.default_rng(1).normal(size=(10, 1000, 1)).astype(np.float32)  # no crop fits: centre 10 x 13
  np.testing.assert_allclose(augment.random_resized_crop(thin, rng, 16), augment.resize(thin[:, 493:506], 16, 16))


def test_tfds_images_of_any_size_become_batches(monkeypatch):
  """ImageNet-like records (uint8 images of varying size): eval is resized + centre-cropped, training
  uses the random-resized crop; both batch to [B, S, S, 3]. The TFDS reader is replaced by a list."""
  from train.data import images

  rng = np.random.default_rng(0)
  records = [{"image": rng.integers(0, 256, size=(int(h), int(w), 3), dtype=np.uint8), "label": i % 5}
             for i, (h, w) in enumerate(rng.integers(20, 60, size=(12, 2)))]
  monkeypatch.setattr(images, "load_data_source", lambda name, split, data_dir: records)
  c = tiny_lm().data
  c.update(dict(name="tfds_images", data_dir="/unused", image_size=16))
  c.tfds_name = "imagenet2012"
  ev = next(pipeline.build(c, split="validation", seed=0, train=False, batch_size=4))
  assert ev["inputs"].shape == (4, 16, 16, 3) and ev["targets"].tolist() == [0, 1, 2, 3]
  c.augment.update(dict(random_resized_crop=16, flip=True))
  tr = next(pipeline.build(c, split="train", seed=0, train=True, batch_size=4))
  assert tr["inputs"].shape == (4, 16, 16, 3) and np.isfinite(tr["inputs"]).all()


def test_random_resized_crop_needs_matching_image_size():
  c = tiny_lm()
  c.data.augment.random_resized_crop = 64
  with pytest.raises(ConfigError, match=r"random_resized_crop=64 needs data.image_size=64"):
    validate(c)
  c.data.image_size = 64
  validate(c)


def test_label_smoothing_and_soft_targets_in_loss():
  import jax.numpy as jnp

  from train.step import task_sums

  logits = jnp.array([[2.0, 0.0, -1.0]])
  hard = {"targets": jnp.array([0]), "weights": jnp.ones(1)}
  soft = {"targets": jnp.array([[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]]), "weights": jnp.ones(1)}
  a = task_sums(logits, hard, "xent", label_smoothing=0.1)["loss"]
  b = task_sums(logits, soft, "xent")["loss"]
  logp = logits - jnp.log(jnp.sum(jnp.exp(logits)))
  np.testing.assert_allclose(a, -(soft["targets"] * logp).sum(), rtol=1e-6)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_docstring_corpus_documents():
  from train.data.local_text_builder import docstrings

  source = b'"""Module."""\ndef f():\n  """Eff."""\nclass C:\n  """See."""\n  def g(self):\n    return 1\n'
  assert docstrings(source) == [b"Module.", b"Eff.", b"See."]  # g has none
  assert docstrings(b"def broken(:\n") == []


def test_a_missing_toy_dataset_package_names_the_extra():
  from train.data import registry

  missing = r"data.name='digits' needs no_such_toy_package.datasets .*pip install -e '\.\[toy\]'"
  with pytest.raises(ValueError, match=missing):
    registry.toy_dataset_module("no_such_toy_package.datasets", "digits")
