"""The one training loop: config -> mesh -> data -> model/optimizer state -> jitted sharded steps ->
metrics and checkpoints in the workdir. Resumes automatically from the workdir's latest checkpoint.

Method-specific behaviour comes as hooks (train/hooks.py, e.g. train/kan_grid.py), which the loop calls at
fixed points of each step: after the update (`after_update`: same shapes), to force a log and eval
(`log_now`), after logging and before saving (`after_log`: may hand back a program with new shapes), and
whenever it builds a program for the shapes in force at a step (`config_at`, `check`). The loop itself
holds no method's special case.
"""

import contextlib
import dataclasses
import json
import math
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from layers.forward_flops import active_params
from train import (
  baselines,
  checkpoint,
  config_changes,
  hooks,
  lock,
  memory,
  metrics,
  mfu,
  optim,
  paths,
  profiling,
  validate,
)
from train import config as config_lib
from train import mesh as mesh_lib
from train import state as state_lib
from train.data import packing, pipeline
from train.step import make_eval_step, make_train_step

SUMMARY = "summary.json"  # written when a run completes; sweeps skip runs that have it


def defaults() -> ml_collections.ConfigDict:
  """The base config's `train` section (each hook's section under its name, train/hooks.py)."""
  return ml_collections.ConfigDict(dict(
    steps=1000, loss="xent", label_smoothing=0.0, log_every=10, eval_every=200, eval_steps=8,
    eval_top_k=(),  # (k, ...): also evaluate with every layer that takes a top_k view (MoE) at each k
    ckpt_every=200, keep_ckpts=3, async_ckpt=True, progress=True, tensorboard=True,
    compilation_cache_dir="",  # keep compiled programs here (local or gs://): reruns and resumes skip compiling
    profile_steps=(),  # (first, last): a jax.profiler trace of those steps in <workdir>/profile
    memory_check=True,  # refuse a step whose estimated per-device memory exceeds the device's (train/memory.py)
    device_memory_gib=0.0,  # the device's memory for that check; 0: ask the device (GPU/TPU), skip on CPU
    **hooks.defaults(),
  ))


def distributed_defaults() -> ml_collections.ConfigDict:
  """The base config's `distributed` section: jax.distributed.initialize() arguments (0 / -1 / "": from the
  environment)."""
  return ml_collections.ConfigDict(dict(initialize=False, coordinator_address="", num_processes=0, process_id=-1))


class NonFiniteLoss(RuntimeError):
  """Raised when a step's loss, gradient norm or updated parameters are NaN or inf (never saved)."""


def maybe_initialize_distributed(cfg) -> None:
  """jax.distributed.initialize() when the config asks for it (TPU pods need no arguments)."""
  if not cfg.initialize or jax.distributed.is_initialized():
    return
  kwargs = {}
  if cfg.coordinator_address:
    kwargs["coordinator_address"] = cfg.coordinator_address
  if cfg.num_processes:
    kwargs["num_processes"] = cfg.num_processes
  if cfg.process_id >= 0:
    kwargs["process_id"] = cfg.process_id
  jax.distributed.initialize(**kwargs)


def use_compilation_cache(directory: str) -> None:
  """Keep compiled programs in `directory` (train.compilation_cache_dir; local or gs://), so a rerun or
  resume of the same config on the same devices skips compilation. JAX keeps those that took over
  jax_persistent_cache_min_compile_time_secs (1 s; env JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS)."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", directory)


def param_counts(setup: state_lib.Setup) -> dict[str, int]:
  """Total parameters, those outside embedding / unembedding tables (any dim named "vocab"), and
  those a token actually uses (MoE: active experts only)."""
  total = embedding = 0
  for _, var in nnx.to_flat_state(setup.abstract_params):
    total += int(var.size)
    if "vocab" in (var.get_metadata().get("axes") or ()):
      embedding += int(var.size)
  return {"params": total, "params_non_embedding": total - embedding,
          "params_active": round(active_params(setup.abstract_model))}


class _Preemption:
  """SIGTERM -> save and stop after a step, the same step on every process.

  One process: a signal handler sets a flag. Several (jax.distributed): JAX's preemption service, which
  installs its own SIGTERM handler, agrees with the other processes on the step to stop at (the largest
  step any of them has reached, plus one), so `requested(step)` must be called by every process at every
  step.
  """

  def __init__(self):
    self._flag, self._previous = False, None
    self._synced = jax.distributed.is_initialized()

  def __enter__(self):
    if not self._synced:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        self._previous = None
    return self

  def _handle(self, signum, frame):
    self._flag = True

  def requested(self, step: int) -> bool:
    return multihost_utils.reached_preemption_sync_point(step) if self._synced else self._flag

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def decode_state_bytes(model: nnx.Module, seq_len: int) -> int | None:
  """Bytes of the decoding state (KV caches, recurrent states, conv buffers) for one sequence of
  seq_len tokens; None for models that cannot decode."""
  if not hasattr(model, "init_cache"):
    return None
  try:
    cache = jax.eval_shape(lambda: model.init_cache(1, seq_len))
  except NotImplementedError:
    return None
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def _tokens_per_example(batch: dict) -> int:
  """Sequence length for token inputs; 1 (an example) for dense inputs such as images."""
  x = batch["inputs"]
  return int(x.shape[1]) if np.issubdtype(x.dtype, np.integer) and x.ndim >= 2 else 1


def evaluate(eval_fn, state, cfg, eval_iter, eval_start: dict, batch_sharding) -> dict:
  """Weighted loss / accuracy over the first eval_steps batches of the eval split (the same batches
  every time: the iterator is rewound to `eval_start`); with train.eval_top_k also eval_loss/top_k=k (and
  eval_accuracy/top_k=k) for each k. eval_loss_se / eval_accuracy_se: their standard errors over the
  eval positions taken as independent (per-position losses' spread / sqrt(weight); binomial for accuracy),
  which understates the error where positions of one sequence are correlated (text)."""
  eval_iter.set_state(eval_start)
  total: dict[str, float] = {}
  for _ in range(cfg.train.eval_steps):
    sums = jax.device_get(eval_fn(state, global_batch(next(eval_iter), batch_sharding)))
    total = {k: total.get(k, 0.0) + float(v) for k, v in sums.items()}
  out = {}
  for suffix in ["", *(f"/top_k={k}" for k in cfg.train.eval_top_k)]:
    w = max(total["weight" + suffix], 1.0)
    out["eval_loss" + suffix] = total["loss" + suffix] / w
    if cfg.train.loss == "xent":
      out["eval_accuracy" + suffix] = total["correct" + suffix] / w
  if "loss_sq" in total:
    w = max(total["weight"], 1.0)
    out["eval_loss_se"] = math.sqrt(max(total["loss_sq"] / w - out["eval_loss"] ** 2, 0.0) / w)
    if "eval_accuracy" in out:
      out["eval_accuracy_se"] = math.sqrt(out["eval_accuracy"] * (1 - out["eval_accuracy"]) / w)
  return out


def check_eval_top_k(model: nnx.Module, top_ks) -> None:
  """A ConfigError unless some layer of `model` takes a `top_k` view (MoE, SMoE-Dropout) valid for every k."""
  for k in top_ks:
    try:
      nnx.view(model, top_k=k)
    except ValueError as e:
      raise config_lib.ConfigError(f"train.eval_top_k={tuple(top_ks)}: {e} (only layers with a top_k view, moe and "
                                   "smoe_dropout, are evaluated at several k); fix the list or set it to ()") from None


@dataclasses.dataclass
class Program:
  """Everything compiled for one config on one mesh: state layout, optimizer, jitted steps."""

  mesh: Mesh
  setup: state_lib.Setup
  tx: optax.GradientTransformation
  batch_sharding: NamedSharding
  train_step: Callable  # (state, batch) -> (state, metrics); donates state
  eval_step: Callable  # (state, batch) -> weighted sums
  init_state: Callable  # () -> a fresh state, created sharded


def build_program(config, mesh: Mesh) -> Program:
  """Jitted steps for `config` on `mesh`. Trace and call them under `jax.set_mesh(program.mesh)` so
  layers that shard explicitly (expert parallelism's shard_map) see the mesh."""
  rules = config.mesh.rules.to_dict()
  setup, tx, lr = state_lib.setup(config.model, config.seed,
                                  lambda p: optim.make(config.optim, p, config.train.steps), mesh, rules)
  batch_sharding = mesh_lib.batch_sharding(mesh, rules)
  train_step = jax.jit(mesh_lib.with_activation_rules(
    make_train_step(setup.graphdef, tx, lr, loss=config.train.loss, grad_accum=config.optim.grad_accum,
                    label_smoothing=config.train.label_smoothing,
                    count_tokens=packing.document_tokens if pipeline.pads(config.data) else None), rules, mesh),
    in_shardings=(setup.shardings, batch_sharding), out_shardings=(setup.shardings, None), donate_argnums=0)
  top_ks = tuple(config.train.eval_top_k)
  check_eval_top_k(setup.abstract_model, top_ks)
  eval_step = jax.jit(mesh_lib.with_activation_rules(
    make_eval_step(setup.graphdef, loss=config.train.loss, top_ks=top_ks), rules, mesh),
    in_shardings=(setup.shardings, batch_sharding))
  init_state = state_lib.initializer(config.model, config.seed, tx, setup)
  return Program(mesh, setup, tx, batch_sharding, train_step, eval_step, init_state)


def global_batch(local: dict, sharding) -> dict:
  """This process's numpy batch (its rows, `mesh.row_group`) -> global arrays laid out by `sharding`."""
  groups = mesh_lib.row_group(sharding)[1]
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
    sharding, np.asarray(x), (x.shape[0] * groups, *x.shape[1:])), local)


def run(config, workdir: str, *, resume_with_changes: Sequence[str] = ()) -> dict:
  """Train `config` in `workdir`, resuming from its newest good checkpoint; returns the final summary.

  A resume refuses a config that differs from the checkpoint's except in benign keys or in the keys (or
  sections) named in `resume_with_changes` (train/config_changes.py). The workdir is locked for the run
  (train/lock.py); config.json is written once the config is accepted.
  """
  maybe_initialize_distributed(config.distributed)
  validate.validate(config)
  config_changes.check_names(config, resume_with_changes)
  use_compilation_cache(config.train.compilation_cache_dir)
  mesh = mesh_lib.make_mesh(config.mesh.shape, dcn_shape=config.mesh.dcn_shape)
  with jax.set_mesh(mesh):
    estimate = memory.check(config, mesh)  # refuses a step that cannot fit, before anything compiles
  if estimate is not None and jax.process_index() == 0:
    print(f"memory per device: about {estimate.describe()}", file=sys.stderr)
  with lock.hold(workdir), jax.set_mesh(mesh):
    return _train(config, paths.path(workdir), mesh, list(resume_with_changes))


def step_statistics(program: Program, config, first: dict, run_hooks: Sequence[hooks.Hook] = ()) -> dict:
  """Logged with every record: parameter counts, FLOPs per step (analytic for LMs, XLA's count of
  the compiled step otherwise), the decoding-state size, and the hooks' fields (e.g. the KAN grid size)."""
  compiled = program.train_step.lower(program.setup.abstract_state,
                                      global_batch(first, program.batch_sharding)).compile()
  xla_flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
  if config.model.kind == "lm":
    step_flops = mfu.train_flops_per_step(program.setup.abstract_model, seq_len=_tokens_per_example(first),
                                          batch_size=config.data.batch_size)
  else:  # image / MLP models: XLA's count (conv and patch weights are reused across positions)
    step_flops = xla_flops * program.mesh.size  # per-device cost analysis of the SPMD program
  out = {**param_counts(program.setup), "flops_per_step": step_flops, "xla_flops_per_step_per_device": xla_flops}
  state_bytes = decode_state_bytes(program.setup.abstract_model, _tokens_per_example(first))
  if state_bytes is not None:
    out["decode_state_bytes"] = state_bytes
  for hook in run_hooks:
    out.update(hook.record(config))
  return out


def _nonfinite(bad: int, ckpt: checkpoint.Checkpointer, workdir: epath.Path) -> NonFiniteLoss:
  return NonFiniteLoss(f"the loss, gradients or parameters became NaN/inf at step {bad}; stopped, the last good "
                       f"checkpoint (step {ckpt.latest_step()}) is kept in {workdir}/checkpoints")


def _restore(config, workdir: epath.Path, mesh: Mesh, ckpt: checkpoint.Checkpointer, accept: list[str],
             build: Callable[[Any, Mesh], Program], run_hooks: Sequence[hooks.Hook]):
  """(step, program, state, data iterator state, accepted config changes) from the newest checkpoint that
  restores and verifies under the accepted config; None if the workdir has no checkpoint."""
  programs = {}

  def program_at(step: int) -> Program:  # the shapes in force at `step` (the hooks' config_at)
    c = hooks.config_at(run_hooks, config, step)
    key = c.to_json(sort_keys=True)
    if key not in programs:
      programs[key] = build(c, mesh)
    return programs[key]

  def changes(step: int, meta: dict) -> dict:
    if "config" not in meta:  # a checkpoint written before configs were saved with it
      return {}
    saved = config_lib.upgrade(meta["config"])[0]  # a checkpoint of an earlier version: today's layout
    return config_changes.accepted(saved, config.to_dict(), accept, workdir=workdir, step=step)

  restored = ckpt.restore_newest(lambda step: program_at(step).setup.abstract_state, changes)
  if restored is None:
    return None
  step, state, data_state, meta = restored
  return step, program_at(step), state, data_state, changes(step, meta)


def _train(config, workdir: epath.Path, mesh: Mesh, accept: list[str]) -> dict:
  is_main = jax.process_index() == 0
  # This process's data shard: the rows its devices hold (shared with the processes that split them along T).
  rows, groups = mesh_lib.row_group(mesh_lib.batch_sharding(mesh, config.mesh.rules.to_dict()))
  steps = config.train.steps

  def build(c, mesh: Mesh) -> Program:  # every program of the run, checked by every hook
    program = build_program(c, mesh)
    for hook in run_hooks:
      hook.check(program)
    return program

  def config_at(step: int):
    return hooks.config_at(run_hooks, config, step)

  run_hooks = hooks.for_run(config, build)

  with contextlib.ExitStack() as cleanup, _Preemption() as preemption:
    try:
      train_iter = pipeline.build(config.data, split=config.data.train_split, seed=config.seed, train=True,
                                  batch_size=config.data.batch_size // groups, process_index=rows,
                                  process_count=groups)
      eval_iter = pipeline.build(config.data, split=config.data.eval_split, seed=config.seed, train=False,
                                 batch_size=config.data.batch_size // groups, process_index=rows, process_count=groups)
    except (ValueError, FileNotFoundError) as e:  # the data sources' own checks of config.data
      raise config_lib.ConfigError(f"data: {e}") from None
    eval_start = eval_iter.get_state()
    # the eval set's input-blind baseline (this process's share), logged with every eval
    eval_baseline = baselines.unigram(next(eval_iter) for _ in range(config.train.eval_steps))
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", every=config.train.ckpt_every,
                                   keep=config.train.keep_ckpts, async_save=config.train.async_ckpt)
    cleanup.callback(ckpt.close)
    restored = _restore(config, workdir, mesh, ckpt, accept, build, run_hooks)
    writer = metrics.MetricWriter(workdir, enabled=is_main, tensorboard=config.train.tensorboard)
    cleanup.callback(writer.close)
    if restored is not None:
      start, program, state, data_state, changes = restored
      train_iter.set_state(data_state)
      writer.truncate_after(start)
      if is_main:
        if changes:
          config_changes.record(workdir, start, changes, accept)
        note = f" with config changes {config_changes.summary(changes)}" if changes else ""
        print(f"resumed from {workdir} at step {start}{note}", file=sys.stderr)
    else:
      start = 0
      program = build(config_at(0), mesh)
      state = program.init_state()
      writer.truncate_after(0)  # a run killed before its first checkpoint starts over
    if is_main:
      config_lib.save(config, workdir)

    first = next(train_iter)
    tokens_per_step = _tokens_per_example(first) * config.data.batch_size
    static = step_statistics(program, config_at(start), first, run_hooks)
    peak, peak_source = mfu.peak_flops()

    progress = None
    if is_main and config.train.progress:
      from tqdm import tqdm

      progress = tqdm(total=steps, initial=start, desc=workdir.name,
                      dynamic_ncols=True, file=sys.stderr)
      cleanup.callback(progress.close)

    def save(step: int, *, force: bool = False) -> None:
      if not force and step % config.train.ckpt_every:
        return
      bad = int(jax.device_get(state["first_bad_step"]))
      if bad >= 0:
        raise _nonfinite(bad, ckpt, workdir)
      meta = {"config": config.to_dict(), "model": config_at(step).model.to_dict()}  # the shapes in force
      if ckpt.save(step, state, train_iter.get_state(), meta, force=force):
        writer.flush()  # a remote metrics.jsonl holds every record up to the checkpoint

    trace = profiling.StepTrace(config.train.profile_steps, workdir)
    cleanup.callback(trace.close)
    rates, last, timed = [], None, False  # timed: the interval since the last record holds no compilation
    counted = []  # padded data: each step's real tokens since the last record (tokens_per_sec leaves padding out)
    batch = first
    last_time, last_step = time.perf_counter(), start
    for step in range(start, steps):
      if step > start:
        batch = next(train_iter)
      gbatch = global_batch(batch, program.batch_sharding)
      trace.before(step + 1)
      state, m = program.train_step(state, gbatch)
      if "tokens" in m:
        counted.append(m.pop("tokens"))
      done = step + 1
      trace.after(done, state)
      for hook in run_hooks:
        state = hook.after_update(done, program, state, gbatch)
      forced = any(hook.log_now(done) for hook in run_hooks)
      evaluate_now = done % config.train.eval_every == 0 or done == steps or forced  # whatever log_every says
      if done % config.train.log_every == 0 or evaluate_now:
        m = jax.device_get(m)
        now = time.perf_counter()
        dt = (now - last_time) / (done - last_step)
        tokens = sum(jax.device_get(counted)) / (done - last_step) if counted else tokens_per_step
        last_time, last_step, counted = now, done, []
        bad = int(jax.device_get(state["first_bad_step"]))
        if bad >= 0:
          raise _nonfinite(bad, ckpt, workdir)
        record = {**m, "step_time": dt, "tokens_per_sec": tokens / dt,
                  "examples_per_sec": config.data.batch_size / dt,
                  "mfu": static["flops_per_step"] / dt / peak, **static}
        if timed:
          rates.append(record["tokens_per_sec"])
        last, timed = record, True
        if evaluate_now:
          record.update(evaluate(program.eval_step, state, config, eval_iter, eval_start, program.batch_sharding),
                        **eval_baseline)
          last_time = time.perf_counter()  # the next interval's rate times training, not this evaluation
        writer.write(done, record)
        if progress is not None:
          progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
      for hook in run_hooks:
        new, state = hook.after_log(done, program, state, gbatch)
        if new is not program:  # new shapes: recount, and the next interval holds a compilation
          program, timed = new, False
          static = step_statistics(program, config_at(done), first, run_hooks)
      if progress is not None:
        progress.update(1)
      save(done, force=done == steps)
      if preemption.requested(done):
        save(done, force=True)  # a no-op when this step was just saved
        ckpt.wait()
        if is_main:
          print(f"SIGTERM: saved a checkpoint at step {done}; rerun the same command to resume", file=sys.stderr)
        break
    ckpt.wait()
    final = metrics.read(workdir) if is_main else []
    final_record = final[-1] if final else {k: metrics.scalar(v) for k, v in (last or {}).items()}
    summary = {
      "workdir": str(workdir), "steps": int(jax.device_get(state["step"])),
      "loss": final_record.get("loss"), "accuracy": final_record.get("accuracy"),
      "eval_loss": final_record.get("eval_loss"), "eval_accuracy": final_record.get("eval_accuracy"),
      "tokens_per_sec": statistics.median(rates) if rates else final_record.get("tokens_per_sec"),
      "mfu_peak_source": peak_source, **param_counts(program.setup),
    }
    if is_main and summary["steps"] == steps:
      paths.write_atomic(workdir / SUMMARY, json.dumps(summary, indent=2, default=str))
  return summary
