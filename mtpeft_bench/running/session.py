"""The life cycle of one run across processes and restarts: which run folder, where to start,
when to write a checkpoint, and the status the run ends with.

Resuming (``mtbench run ... --resume [RUN_ID]``, ``run(cfg, resume=...)``):

- ``resume=None``: a new run.
- ``resume=True``: continue this configuration. If a completed result with the same
  ``config_hash`` is in the results folder, nothing runs and that record is returned; else the
  newest unfinished run with that hash under the runs folder is resumed (``running`` ones only
  when their process is gone); else a new run starts. A scheduler can therefore re-issue the same
  command after a preemption.
- ``resume="<run_id>"``: resume exactly that run; its configuration must hash the same.

The decision is running/resume.py's (shared with sweeps); this module acts on it.

The checkpoint restores everything training depends on (model, optimizer, scheduler, gradient
scaler, every process's RNG states, the epoch and the step within it, the history so far), and
the data order and augmentations are functions of (seed, epoch, sample) (train/distributed.py), so a
resumed run on the same machine continues bit for bit as if it had never stopped. RNG states are
per process; resuming with another number of processes is refused because it changes the global
batch (and therefore the configuration hash).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mtpeft_bench.atomic import make_folders, remove_empty_folders, write_json_atomic
from mtpeft_bench.errors import UserError
from mtpeft_bench.running.folders import STATE_NAME, RunDir, new_run_state
from mtpeft_bench.running.resume import decide
from mtpeft_bench.train.checkpoint import (
    Checkpoint,
    capture_rng,
    load_checkpoint,
    restore_model,
    restore_optimization,
    restore_rng,
    save_checkpoint,
)
from mtpeft_bench.train.distributed import DistContext, mix_seed


def new_run_id(config_hash: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{config_hash[:8]}-s{seed}-{secrets.token_hex(2)}"


@dataclass
class SessionPlan:
    """What this run is, decided on rank 0 and shared with every process.

    Attributes:
        completed: the result record when ``resume=True`` found the configuration done (nothing runs).
        run_id, state: the run folder's id and the state it starts with.
        resume: whether it continues from the folder's checkpoint.
        root: the run folders' root.
        previous_state: when resuming, the folder's state before this session (put back by
            :meth:`RunSession.abandon`).
    """

    completed: dict[str, Any] | None = None
    run_id: str = ""
    state: dict[str, Any] | None = None
    root: str = ""
    previous_state: dict[str, Any] | None = None

    @property
    def resume(self) -> bool:
        """Whether this continues an interrupted run (its earlier state is kept to put back)."""
        return self.previous_state is not None


class RunSession:
    """One process's view of the run: the folder, the checkpoint it resumes from, the saving.

    Two steps: :meth:`plan` (before anything is built: new run, resume, or nothing to do; writes no
    file) and :meth:`begin` (once the model is built, just before training: creates or takes over
    the run folder and loads the checkpoint), so a run that fails while being set up leaves no run
    folder. Every process takes both steps; only rank 0 writes files, the others take part in the
    collective steps (the decision, gathering RNG states).
    """

    def __init__(self, ctx: DistContext, run_dir: RunDir, checkpoint: Checkpoint | None, device: torch.device,
                 previous_state: dict[str, Any] | None = None, created: list[Path] | None = None):
        self.ctx = ctx
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.device = device
        # What abandon() undoes: the folder's state before this session, or the folders it created.
        self.previous_state = previous_state
        self.created = list(created or [])
        self.saved = False  # whether this session wrote a checkpoint
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

    @property
    def folder(self) -> Path:
        return self.run_dir.path

    def has_checkpoint(self) -> bool:
        return self.run_dir.has_checkpoint()

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def plan(cls, ctx: DistContext, cfg: Any, stored_config: Mapping[str, Any], config_hash: str, root: Path,
             out: Path, resume: bool | str | None) -> SessionPlan:
        """Decide (on rank 0, shared with all) what this run is: done already (``resume=True`` and a
        completed record), a new run, or the run folder it resumes.

        Raises:
            UserError: the run to resume does not exist, cannot be resumed, or has another configuration.
        """
        plan: SessionPlan | None = None
        error: str | None = None
        if ctx.is_main:
            try:
                plan = cls._open(cfg, stored_config, config_hash, root, out, resume, ctx.world_size)
            except UserError as exc:
                error = str(exc)
        plan, error = ctx.broadcast((plan, error))
        if error is not None:
            raise UserError(error)
        assert plan is not None
        return plan

    @staticmethod
    def _open(cfg: Any, stored_config: Mapping[str, Any], config_hash: str, root: Path, out: Path,
              resume: bool | str | None, world_size: int) -> SessionPlan:
        decision = decide(config_hash, out, root, resume, stored_config=stored_config, world_size=world_size)
        if decision.kind == "done":
            return SessionPlan(completed=decision.record, root=str(root))
        if decision.run is None:
            run_id = new_run_id(config_hash, cfg.seed)
            return SessionPlan(run_id=run_id, state=new_run_state(run_id, stored_config, config_hash, world_size),
                               root=str(root))
        state = dict(decision.run.state)
        state.update(status="running", message="", pid=os.getpid(), host=socket.gethostname(),
                     sessions=int(state.get("sessions", 1)) + 1)
        return SessionPlan(run_id=decision.run.run_id, state=state, root=str(root),
                           previous_state=dict(decision.run.state))

    @classmethod
    def begin(cls, ctx: DistContext, plan: SessionPlan, device: torch.device) -> "RunSession":
        """Load the checkpoint (when resuming) and mark the run folder ``running`` for this process."""
        run_dir = RunDir(Path(plan.root) / plan.run_id, dict(plan.state or {}))
        checkpoint = load_checkpoint(run_dir.checkpoint_path) if plan.resume else None
        created: list[Path] = []
        if ctx.is_main:
            created = make_folders(run_dir.path)
            run_dir.clean_temporaries()
            run_dir.update()
        ctx.barrier()
        return cls(ctx, run_dir, checkpoint, device, plan.previous_state, created)

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
        self.saved = True
        self.ctx.barrier()

    def mark(self, status: str, message: str = "", **fields: Any) -> None:
        """Record how the run stands (rank 0 only; never raises, it runs while handling errors)."""
        if not self.ctx.is_main:
            return
        try:
            self.run_dir.update(status=status, message=message, **fields)
        except OSError:
            pass

    def abandon(self, message: str) -> str:
        """Bad input found after the run folder was opened (a corrupt data file, a checkpoint that does
        not fit the model): leave the run folders as they were before this session, unless this
        session saved a checkpoint worth continuing from (then the run is marked ``failed``).

        Returns what to add to the error line ("" when nothing was kept). Never raises (it runs
        while handling an error); rank 0 touches the files, every process returns the same text.
        """
        if self.saved:
            self.mark("failed", message)
            return (f" (run {self.run_id} stopped; its last checkpoint is kept in {self.folder}: fix this and "
                    f"continue it with the same command and --resume {self.run_id})")
        if not self.ctx.is_main:
            return ""
        try:
            if self.previous_state is not None:  # resumed: put its state back as it was
                write_json_atomic(self.run_dir.path / STATE_NAME, self.previous_state)
            else:  # new: remove its folder and every folder this session created for it
                shutil.rmtree(self.run_dir.path, ignore_errors=True)
                remove_empty_folders(self.created)
        except OSError:
            pass
        return ""
