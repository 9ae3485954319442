"""The one training loop of `landmarks train-core` and `landmarks adapt`.

A command supplies a `Task` (its data, networks, losses and exported file); `TrainingRun` does the
rest the same way for both: seed, resolved config (every invocation kept, in order), progress bar,
periodic validation, history and curve, checkpoints and `--resume`, `--max-minutes`, and under
torchrun one process (rank 0) writing every file.

A checkpoint is `checkpoint.pt`: the task's state dicts by name plus step, history, elapsed seconds
and provenance strings. It is written by this code and read back with `weights_only=True`, so even a
tampered file cannot run code; it holds unwrapped state dicts, so a run resumes on any world size.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from training.devices import Processes

__all__ = ["LoopSettings", "RunState", "Task", "TrainingRun", "read_checkpoint"]


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    validate_every: int  # 0 = only at the end
    checkpoint_every: int  # 0 = only at the end
    max_minutes: float = 0.0  # 0 = run the schedule
    seed: int = 0


@dataclass
class RunState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0
    # strings the exported file records and a resumed run must keep (warm start, init-from core)
    provenance: dict[str, str] = field(default_factory=dict)


class Task(Protocol):
    """What differs between the two commands."""

    name: str  # progress bar and curve title
    metric: tuple[str, str] | None  # (history key, axis label) of the validation metric on the curve
    best_is: str  # "min" or "max": the metric's best value; the export at the best one is kept as best-<file>

    def state(self) -> dict[str, Any]: ...  # state dicts by name, everything a resume needs

    def load_state(self, state: dict[str, Any]) -> None: ...

    def steps_per_epoch(self) -> int: ...  # batches each process gets per epoch

    def batches(self, epoch: int) -> Iterable[Any]: ...  # this process's batches of one epoch

    # one optimiser step -> its record: numbers, or 0-dim tensors on the device (read in one transfer)
    def train_step(self, batch: Any, step: int) -> dict[str, torch.Tensor | float]: ...

    def validate(self, step: int) -> dict[str, float]: ...  # rank 0 only: metrics and pictures

    def export(self, run: RunState) -> Path: ...  # rank 0 only: the file the run delivers


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint.pt as tensors and plain containers (weights_only: never arbitrary objects)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(ckpt, dict) or "step" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint of this project (no step)")
    return ckpt


_RUN_KEYS = ("step", "history", "elapsed", "provenance")
# where checkpoints written before the harness kept their provenance
_LEGACY_PROVENANCE = {"warm_started_from": "warm_started_from", "init_from_sha256": "initialised_from"}


def _as_numbers(record: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """A step's record as Python numbers: its tensors copied from the device together, one wait per step."""
    tensors = {k: v for k, v in record.items() if isinstance(v, torch.Tensor)}
    if tensors:
        values = torch.stack([v.detach().float().reshape(()) for v in tensors.values()]).tolist()
        record = {**record, **dict(zip(tensors, values))}
    return record


class TrainingRun:
    """One run's folder, schedule and processes; `restore`, then `train(task)`."""

    def __init__(self, out: str | Path, settings: LoopSettings, processes: Processes, device: torch.device,
                 config: object, command: str = "", batch_size: int = 1,
                 on_step: Callable[[RunState], None] | None = None) -> None:
        self.out, self.settings, self.processes, self.device = Path(out), settings, processes, device
        self.config, self.command, self.batch_size = config, command, batch_size
        self.on_step = on_step  # rank 0, after each step's record (and checkpoint): progress reports
        self.state = RunState()
        self._validated_at = -1
        self.checkpoint_path = self.out / "checkpoint.pt"
        if processes.main:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(settings.seed)

    def log(self, message: str) -> None:
        if self.processes.main:
            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------------------------ resume / save
    def restore(self, task: Task, resume: bool) -> bool:
        """With `resume`, continue from OUT/checkpoint.pt if there is one; True if it did."""
        if not resume:
            return False
        if not self.checkpoint_path.is_file():
            self.log(f"--resume: no checkpoint in {self.out}, starting fresh")
            return False
        ckpt = read_checkpoint(self.checkpoint_path, self.device)
        task.load_state({k: v for k, v in ckpt.items() if k not in _RUN_KEYS})
        provenance = ckpt.get("provenance") or {new: ckpt[old] for old, new in _LEGACY_PROVENANCE.items() if ckpt.get(old)}
        self.state = RunState(int(ckpt["step"]), list(ckpt["history"]), float(ckpt["elapsed"]), dict(provenance))
        self.log(f"resumed from {self.checkpoint_path} at step {self.state.step}")
        return True

    def write_config(self, resume: bool) -> None:
        """config.json: the resolved config and every invocation so far (a resumed run may change flags)."""
        if not self.processes.main:
            return
        path = self.out / "config.json"
        previous = []
        if resume and path.is_file():
            old = json.loads(path.read_text())
            previous = old.get("commands") or [{"command": old.get("command", ""), "from_step": 0}]
        values = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else dict(self.config)
        path.write_text(json.dumps({**values, "command": self.command, "world_size": self.processes.world,
                                    "commands": [*previous, {"command": self.command, "from_step": self.state.step}]},
                                   indent=2))

    def save(self, task: Task) -> Path | None:
        """Checkpoint, history, curve and the exported file (rank 0); returns the exported file."""
        if not self.processes.main:
            return None
        from training.plots import plot_curves

        s = self.state
        tmp = self.out / "checkpoint.tmp"
        torch.save({**task.state(), "step": s.step, "history": s.history, "elapsed": s.elapsed,
                    "provenance": s.provenance}, tmp)
        tmp.replace(self.checkpoint_path)
        with open(self.out / "history.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in s.history)
        key, label = task.metric or (None, "")
        plot_curves(s.history, self.out / "curve.png", task.name, metric_key=key, metric_label=label)
        path = task.export(s)
        if path is not None and key and self._best_so_far(key, task.best_is):
            # model selection on validation: the file at the best score survives later, worse steps
            shutil.copyfile(path, path.with_name(f"best-{path.name}"))
            self.log(f"step {s.step}: best {key} so far ({s.history[-1][key]:.4g}): {path.with_name('best-' + path.name)}")
        return path

    def _best_so_far(self, key: str, best_is: str) -> bool:
        """Whether this step was validated and scored at least as well as every earlier validation."""
        scores = [h[key] for h in self.state.history if key in h]
        if not scores or self.state.history[-1].get(key) is None:
            return False
        pick = min if best_is == "min" else max
        return scores[-1] == pick(scores)

    # --------------------------------------------------------------------------------------- loop
    def train(self, task: Task) -> Path | None:
        """Run the schedule (or what `--max-minutes` allows) and export; returns the file (rank 0)."""
        cfg, s, world = self.settings, self.state, self.processes.world
        start = time.time() - s.elapsed
        bar = tqdm(total=cfg.steps, initial=s.step, desc=task.name, disable=not self.processes.main,
                   mininterval=10, dynamic_ncols=True, file=sys.stderr)
        per_epoch = task.steps_per_epoch()
        if per_epoch < 1:
            raise ValueError("an epoch gives no batch: fewer usable images than --batch-size x processes")
        epoch, stop = s.step // per_epoch, False  # a resumed run goes on with the next epoch's order
        while s.step < cfg.steps and not stop:
            tick, seen = time.time(), 0
            for batch in task.batches(epoch):
                record = _as_numbers(task.train_step(batch, s.step))
                s.step += 1
                seen += self.batch_size * world
                s.elapsed = time.time() - start
                rate = seen / max(1e-9, time.time() - tick)
                record = {"step": s.step, **record, "time": round(s.elapsed, 1)}
                if cfg.validate_every and (s.step % cfg.validate_every == 0 or s.step == cfg.steps):
                    record.update(self._validate(task, bar, record, rate))
                s.history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3g}", ips=f"{rate:.1f}")
                if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0:  # 0: only at the end
                    self.save(task)
                if self.on_step is not None and self.processes.main:
                    self.on_step(s)
                out_of_time = bool(cfg.max_minutes) and s.elapsed > cfg.max_minutes * 60
                if self.processes.agree(out_of_time, self.device):
                    self.log(f"stopping at step {s.step}: --max-minutes {cfg.max_minutes} reached "
                             "(continue with --resume)")
                    stop = True
                if s.step >= cfg.steps or stop:
                    break
            epoch += 1
        bar.close()
        if s.history and self._validated_at != s.step:
            s.history[-1].update(self._validate(task, bar, s.history[-1], None))
        return self.save(task)

    def _validate(self, task: Task, bar, record: dict, rate: float | None) -> dict:
        self._validated_at = record["step"]
        if not self.processes.main:
            return {}
        metrics = task.validate(record["step"])
        if rate is not None:
            metrics["img_per_s"] = round(rate, 2)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        bar.write(f"step {record['step']}: loss {record['loss']:.4g}  {shown}  {record['time'] / 60:.1f} min",
                  file=sys.stderr)
        return metrics
