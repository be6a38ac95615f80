"""Launchers that launch: sweep-wide overrides, the TPU-VM and SLURM scripts run against stub gcloud /
sbatch / srun commands that execute here what they would run remotely (real 2-process jax.distributed
runs on the CPU), and the devices each --parallel run gets on a GPU host."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from tests.test_train_run import _committed_checkpoints, _free_port
from train import metrics, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUBS = os.path.join(ROOT, "tests", "data", "stubs")
SPEC = "tests/data/sweep_experiment.py"


def _stub_env(**extra) -> dict:
  return {**os.environ, "PATH": f"{STUBS}:{os.environ['PATH']}", "JAX_PLATFORMS": "cpu",
          "JAX_COORDINATOR_PORT": str(_free_port()), **extra}


def test_sweep_overrides_apply_to_every_run_before_its_own(tmp_path, capsys):
  root = tmp_path / "runs"
  assert sweep.main(["--config", SPEC, "--root", str(root), "--emit", "shell", "--config.model.d_model=48",
                     "--config.optim.lr", "0.002"]) == 0
  runs = sweep.expand(SPEC, str(root))
  assert len(runs) == 4
  for r in runs:
    config = json.loads(open(os.path.join(r.workdir, "config.json")).read())
    assert config["model"]["d_model"] == 48 and config["optim"]["lr"] == 0.002
    assert config["model"]["blocks"] == r.overrides["model.blocks"] and config["seed"] == r.overrides["seed"]
  assert sweep.main(["--config", SPEC, "--root", str(root), "--config.model.d_modle=48"]) == 2
  assert "unknown config key 'model.d_modle'" in capsys.readouterr().err


def _kill_queues(hosts) -> None:
  for pid_file in hosts.glob("worker-*/ablax-*.pid"):
    try:
      os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    except (ProcessLookupError, ValueError):
      pass


def test_tpu_vm_script_ships_installs_starts_detached_and_resumes(tmp_path):
  root, hosts = tmp_path / "runs", tmp_path / "hosts"
  assert sweep.main(["--config", f"{SPEC}:steps=100,runs=1", "--root", str(root), "--emit", "tpu-vm",
                     "--config.train.ckpt_every=2"]) == 0
  env = _stub_env(TPU_NAME="test-slice", ZONE="test-zone", STUB_WORKERS="2", STUB_HOSTS=str(hosts),
                  ABLAX_PYTHON=sys.executable, ABLAX_INSTALL='echo "installed from $SRC" > ~/installed')
  workdir = root / "blocks-attention_swiglu_x_2_seed-0"

  def launch() -> str:
    out = subprocess.run(["bash", str(root / "launch_tpu.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout

  try:
    assert "worker-0: started 1 run(s)" in launch()
    for i in range(2):  # every worker got the source tree and ran the install command in it
      src = (hosts / f"worker-{i}" / "installed").read_text().split()[-1]
      assert src.startswith(str(hosts / f"worker-{i}")) and os.path.exists(os.path.join(src, "train", "loop.py"))
    assert launch().count("still running") == 2  # a second launch leaves running queues alone
    deadline = time.time() + 240
    while not _committed_checkpoints(workdir):  # then the slice is preempted: every worker dies
      assert time.time() < deadline and not (workdir / "summary.json").exists(), "no checkpoint before the end"
      time.sleep(0.05)
    _kill_queues(hosts)
    assert not (workdir / "summary.json").exists()
    assert launch().count("started 1 run(s)") == 2  # launching again resumes
    while not (workdir / "summary.json").exists():
      assert time.time() < deadline, "the resumed run did not finish"
      time.sleep(0.5)
  finally:
    _kill_queues(hosts)
  assert [r["step"] for r in metrics.read(workdir)] == list(range(1, 101))
  assert json.loads((workdir / "summary.json").read_text())["steps"] == 100
  logs = {i: (workdir / "logs" / f"worker-{i}.txt").read_text() for i in range(2)}
  assert "resumed from" in logs[0] and all(log.count("Rank") == 2 for log in logs.values()), logs  # 2 starts each


def test_slurm_script_runs_one_process_per_node_with_distributed_init(tmp_path):
  root = tmp_path / "runs"
  assert sweep.main(["--config", f"{SPEC}:steps=3,runs=1", "--root", str(root), "--emit", "slurm", "--nodes", "2",
                     "--gpus-per-node", "1", "--partition", "test", "--time", "0:10:00", "--env", sys.prefix]) == 0
  script = (root / "launch.slurm").read_text()
  assert "#SBATCH --partition=test" in script and "#SBATCH --time=0:10:00" in script
  out = subprocess.run(["sbatch", str(root / "launch.slurm")], env=_stub_env(), capture_output=True, text=True,
                       timeout=400)
  assert out.returncode == 0, out.stderr + "".join(p.read_text()[-3000:] for p in root.glob("slurm-*.out"))
  (run,) = sweep.expand(f"{SPEC}:runs=1", str(root))
  log = open(os.path.join(run.workdir, "log.txt")).read()
  assert run.status == "done" and [r["step"] for r in metrics.read(run.workdir)] == [1, 2, 3]
  # Two processes (one per node) formed one jax.distributed run and agree on the result.
  assert log.count("is connected to 1 peer ranks") == 2, log
  losses = re.findall(r'"loss": ([0-9.]+)', log)
  assert len(losses) == 2 and len(set(losses)) == 1, log


def test_slurm_array_task_i_runs_run_i(tmp_path):
  root = tmp_path / "runs"
  assert sweep.main(["--config", f"{SPEC}:runs=3", "--root", str(root), "--emit", "slurm", "--nodes", "2",
                     "--gpus-per-node", "4", "--env", sys.prefix]) == 0
  out = subprocess.run(["sbatch", str(root / "launch.slurm")], env=_stub_env(STUB_SRUN_ECHO="1"),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  for i, run in enumerate(sweep.expand(f"{SPEC}:runs=3", str(root))):
    tasks = open(os.path.join(run.workdir, "log.txt")).read().splitlines()
    assert len(tasks) == 2 and all(f"of job {1000 + i}: python -m train --config {run.workdir}/config.json" in t
                                   and t.endswith("--config.distributed.initialize=true") for t in tasks), tasks
    assert (root / f"slurm-1000_{i}.out").exists()
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in (root / "launch.slurm").read_text()


def test_parallel_runs_get_their_own_gpus():
  gpus = [str(i) for i in range(8)]
  assert [sweep.run_env(s, 4, gpus) for s in range(4)] == [{"CUDA_VISIBLE_DEVICES": f"{2 * s},{2 * s + 1}"}
                                                            for s in range(4)]
  shared = [sweep.run_env(s, 4, ["0", "1"]) for s in range(4)]
  assert [e["CUDA_VISIBLE_DEVICES"] for e in shared] == ["0", "1", "0", "1"]
  assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450" for e in shared)
  assert sweep.run_env(0, 2, []) == {} and sweep.run_env(0, 1, gpus) == {}


def test_visible_gpus_from_nvidia_smi_or_cuda_visible_devices(monkeypatch):
  monkeypatch.setenv("PATH", f"{STUBS}:{os.environ['PATH']}")
  monkeypatch.setenv("STUB_GPUS", "4")
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  assert sweep.visible_gpus() == ["0", "1", "2", "3"]
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
  assert sweep.visible_gpus() == ["2", "5"]


def test_concurrent_runs_never_share_a_slot(monkeypatch, tmp_path):
  """run_local hands each running run a free slot: at no time do two runs hold the same GPUs."""
  held, clashes, lock = set(), [], threading.Lock()

  def fake_launch(run, env, extra=()):
    with lock:
      if env["CUDA_VISIBLE_DEVICES"] in held:
        clashes.append(run.name)
      held.add(env["CUDA_VISIBLE_DEVICES"])
    time.sleep(0.02)
    with lock:
      held.discard(env["CUDA_VISIBLE_DEVICES"])
    return 0

  monkeypatch.setattr(sweep, "launch", fake_launch)
  runs = [sweep.Run(f"r{i}", {}, str(tmp_path / f"r{i}")) for i in range(12)]
  assert sweep.run_local(runs, 3, ["0", "1", "2", "3", "4", "5"]) == {r.name: 0 for r in runs}
  assert not clashes


def test_a_remote_root_keeps_remote_workdirs_and_a_local_script(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = sweep.emit("tpu-vm", [sweep.Run("a", {}, "gs://bucket/sweep/a")], "gs://bucket/sweep")
  assert path == os.path.join("launch-gs_bucket_sweep", "launch_tpu.sh") and not os.path.exists("gs:")
  (worker,) = [p for p in os.listdir("launch-gs_bucket_sweep") if p.endswith("-worker.sh")]
  assert "  gs://bucket/sweep/a\n" in open(os.path.join("launch-gs_bucket_sweep", worker)).read()
