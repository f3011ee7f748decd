"""The life cycle of one run across processes and restarts: which run folder, where to start,
when to write a checkpoint, and the status the run ends with.

Resuming (``mtbench run ... --resume [RUN_ID]``, ``runner.run(cfg, resume=...)``):

- ``resume=None``: a new run.
- ``resume=True``: continue this configuration. If a completed result with the same
  ``config_hash`` is in the results folder, nothing runs and that record is returned; else the
  newest unfinished run with that hash under the runs folder is resumed (``running`` ones only
  when their process is gone); else a new run starts. A scheduler can therefore re-issue the same
  command after a preemption.
- ``resume="<run_id>"``: resume exactly that run; its configuration must hash the same.

The checkpoint restores everything training depends on (model, optimizer, scheduler, gradient
scaler, every process's RNG states, the epoch and the step within it, the history so far), and
the data order and augmentations are functions of (seed, epoch, sample) (distributed.py), so a
resumed run on the same machine continues bit for bit as if it had never stopped. RNG states are
per process; resuming with another number of processes is refused because it changes the global
batch (and therefore the configuration hash).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from mtpeft_bench.checkpoint import (
    Checkpoint,
    RunDir,
    capture_rng,
    config_difference,
    find_run_to_resume,
    load_checkpoint,
    new_run_state,
    read_run,
    restore_model,
    restore_optimization,
    restore_rng,
    resumable,
    save_checkpoint,
)
from mtpeft_bench.distributed import DistContext, mix_seed
from mtpeft_bench.errors import UserError


# Settings that may change between the sessions of one run (they do not change what is computed).
_MAY_CHANGE = ("out", "tag", "data_root", "device", "num_workers", "progress", "checkpoint_every", "runs_dir")


def find_completed(out: Path, config_hash: str) -> dict[str, Any] | None:
    """The newest completed result record under ``out`` with ``config_hash``, or None."""
    from mtpeft_bench.results import read_records

    found = [r for r in read_records(Path(out)) if r.get("status") == "completed" and r.get("config_hash") == config_hash]
    return max(found, key=lambda r: r.get("created", "")) if found else None


def new_run_id(config_hash: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{config_hash[:8]}-s{seed}-{secrets.token_hex(2)}"


class RunSession:
    """One process's view of the run: the folder, the checkpoint it resumes from, the saving.

    Two steps: :meth:`plan` (before anything is built: new run, resume, or nothing to do; writes no
    file) and :meth:`begin` (once the model is built, just before training: creates or takes over
    the run folder and loads the checkpoint), so a run that fails while being set up leaves no run
    folder. Every process takes both steps; only rank 0 writes files, the others take part in the
    collective steps (the decision, gathering RNG states).
    """

    def __init__(self, ctx: DistContext, run_dir: RunDir, checkpoint: Checkpoint | None, device: torch.device):
        self.ctx = ctx
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.device = device
        meta = checkpoint.meta if checkpoint is not None else {}
        self.start_epoch: int = int(meta.get("epoch", 1))
        self.step_in_epoch: int = int(meta.get("step_in_epoch", 0))
        # This process's statistics of the epoch it stopped in (each process averaged its own batches).
        self.partial: dict[str, Any] | None = (meta.get("partial") or {}).get(str(ctx.rank))
        self.history: list[dict[str, Any]] = list(meta.get("history", []))
        self.elapsed_before: float = float(meta.get("elapsed_s", 0.0))
        self.sessions: int = int(run_dir.state.get("sessions", 1))
        self.resumed_from = [int(meta["epoch"]), int(meta.get("step_in_epoch", 0))] if checkpoint is not None else None

    @property
    def run_id(self) -> str:
        return self.run_dir.run_id

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def plan(cls, ctx: DistContext, cfg: Any, cfg_dict: Mapping[str, Any], config_hash: str, root: Path, out: Path,
             resume: bool | str | None) -> dict[str, Any]:
        """Decide (on rank 0, shared with all) what this run is: ``{"completed": record}`` when
        ``resume=True`` finds the configuration done, else the run id, its state and whether it resumes.

        Raises:
            UserError: the run to resume does not exist, cannot be resumed, or has another configuration.
        """
        decision: dict[str, Any] | None = None
        error: str | None = None
        if ctx.is_main:
            try:
                decision = cls._decide(cfg, cfg_dict, config_hash, root, out, resume, ctx.world_size)
            except UserError as exc:
                error = str(exc)
        decision, error = ctx.broadcast((decision, error))
        if error is not None:
            raise UserError(error)
        assert decision is not None
        decision["root"] = str(root)
        return decision

    @classmethod
    def begin(cls, ctx: DistContext, plan: Mapping[str, Any], device: torch.device) -> "RunSession":
        """Load the checkpoint (when resuming) and mark the run folder ``running`` for this process."""
        run_dir = RunDir(Path(plan["root"]) / plan["run_id"], dict(plan["state"]))
        checkpoint = load_checkpoint(run_dir.checkpoint_path) if plan["resume"] else None
        if ctx.is_main:
            run_dir.path.mkdir(parents=True, exist_ok=True)
            run_dir.clean_temporaries()
            run_dir.update()
        ctx.barrier()
        return cls(ctx, run_dir, checkpoint, device)

    @staticmethod
    def _decide(cfg: Any, cfg_dict: Mapping[str, Any], config_hash: str, root: Path, out: Path,
                resume: bool | str | None, world_size: int) -> dict[str, Any]:
        if resume is True:
            done = find_completed(out, config_hash)
            if done is not None:
                return {"completed": done}
            found = find_run_to_resume(root, config_hash)
        elif isinstance(resume, str) and resume:
            found = read_run(root / resume)
            if found is None:
                raise UserError(f"no run '{resume}' under {root}; list the run folders there, or use --resume "
                                "without an id to continue the newest interrupted run of this configuration")
            why = resumable(found)
            if why:
                raise UserError(f"{why}; cannot resume it")
            if found.state.get("config_hash") != config_hash:
                diff = config_difference(found.state.get("config", {}), cfg_dict, ignore=_MAY_CHANGE)
                if found.state.get("world_size", 1) != world_size:
                    diff.append(f"processes: {found.state.get('world_size', 1)} → {world_size}")
                raise UserError(f"run {resume} was started with another configuration ({'; '.join(diff) or 'plugin options'}); "
                                "resume it with the same settings")
        else:
            found = None
        if found is None:
            run_id = new_run_id(config_hash, cfg.seed)
            return {"run_id": run_id, "resume": False, "state": new_run_state(run_id, cfg_dict, config_hash, world_size)}
        state = dict(found.state)
        state.update(status="running", message="", pid=os.getpid(), host=socket.gethostname(),
                     sessions=int(state.get("sessions", 1)) + 1)
        return {"run_id": found.run_id, "resume": True, "state": state}

    # -- restoring ----------------------------------------------------------------------------------
    def restore_model(self, model: torch.nn.Module) -> None:
        """Load the model weights into the bare model (in place: a DDP wrapper around it sees them)."""
        if self.checkpoint is not None:
            restore_model(self.checkpoint, model)

    def restore_training(self, trainer: Any) -> None:
        """Load optimizer, scheduler, scaler and step counter; then the RNG states (last, so nothing
        built afterwards consumes them). A new run seeds each process's training randomness
        (drop path) with ``(seed, rank)`` when there are several processes."""
        if self.checkpoint is None:
            if self.ctx.distributed:
                torch.manual_seed(mix_seed(int(self.run_dir.state["config"]["seed"]), self.ctx.rank))
            return
        restore_optimization(self.checkpoint, optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                             scaler=trainer.scaler)
        trainer.step = int(self.checkpoint.meta["trainer_step"])
        rng = self.checkpoint.rng(self.ctx.rank)
        if rng is None:
            raise UserError(f"the checkpoint of run {self.run_id} has no RNG state for rank {self.ctx.rank}")
        restore_rng(rng, self.device)

    # -- saving -------------------------------------------------------------------------------------
    def save(self, *, model: torch.nn.Module, trainer: Any, epoch: int, step_in_epoch: int,
             partial: Mapping[str, Any] | None, history: list[dict[str, Any]], elapsed_s: float) -> None:
        """Write the checkpoint of "``step_in_epoch`` steps into ``epoch``" (every process calls it;
        rank 0 writes). ``model`` is the bare model; ``partial`` this process's statistics of the
        unfinished epoch, if any."""
        gathered = self.ctx.gather((capture_rng(self.device), partial))
        if self.ctx.is_main:
            assert gathered is not None
            rng_states = [rng for rng, _ in gathered]
            partials = {str(rank): part for rank, (_, part) in enumerate(gathered)} if partial is not None else None
            meta = {"run_id": self.run_id, "epoch": epoch, "step_in_epoch": step_in_epoch, "partial": partials,
                    "trainer_step": trainer.step, "history": history, "elapsed_s": elapsed_s,
                    "world_size": self.ctx.world_size, "config_hash": self.run_dir.state.get("config_hash")}
            save_checkpoint(self.run_dir.checkpoint_path, model=model, optimizer=trainer.optimizer,
                            scheduler=trainer.scheduler, scaler=trainer.scaler, rng_states=rng_states, meta=meta)
            self.run_dir.update(epoch=epoch, step_in_epoch=step_in_epoch, checkpoint=self.run_dir.checkpoint_path.name)
        self.ctx.barrier()

    def mark(self, status: str, message: str = "", **fields: Any) -> None:
        """Record how the run stands (rank 0 only; never raises, it runs while handling errors)."""
        if not self.ctx.is_main:
            return
        try:
            self.run_dir.update(status=status, message=message, **fields)
        except OSError:
            pass
