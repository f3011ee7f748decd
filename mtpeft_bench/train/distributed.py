"""Several processes through ``torchrun``: process group, data sharding, DDP, reductions.

``torchrun --nproc_per_node N -m mtpeft_bench run ...`` starts N copies of the same command; each
reads its rank from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and this module
turns that into a :class:`DistContext`. The rules of a distributed run (docs/protocol.md 6 and 8: the
reference code bases either do not wrap the model in DDP (MTLoRA) or report each rank's shard of
the validation set without reducing it (DiTASK)):

- **Backend**: NCCL on GPUs (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPUs.
- **Training data**: :class:`ShardSampler` draws one permutation per epoch from ``(seed, epoch)``
  and gives rank ``r`` every ``world``-th index starting at ``r`` (as ``DistributedSampler``
  does). Batch ``k`` of all ranks together is then exactly batch ``k`` of one process running the
  global batch, so N processes × batch B/N and 1 process × batch B see the same samples per step.
- **Augmentation**: :class:`PerSampleSeed` draws each sample's augmentation randomness from
  ``(seed, epoch, index)``, so it does not depend on the number of processes, of data-loader
  workers, or on where a run was resumed (the flips have the same distribution as before).
- **Validation data**: each rank evaluates a contiguous block of the validation set, every sample
  exactly once (``DistributedSampler`` would pad with duplicates), and the metric meters are
  all-reduced before ``compute()``; the numbers are those of one pass over the whole split.
- **Gradients**: ``DistributedDataParallel`` averages them over ranks; ``find_unused_parameters``
  is read from the encoder's capability attribute of that name (methods/base.py).
- **BatchNorm** (the decoder heads): per process by default, as DiTASK's DDP runs; the switch
  ``sync_bn=true`` normalises with the statistics of the global batch (torch's ``SyncBatchNorm`` on
  GPUs, :class:`CrossRankBatchNorm2d` on CPUs, where torch's has no kernels).
- **LR**: scaled by the global batch ``batch_size × world_size / lr_reference_batch``.
- **Randomness in the model** (drop path): every process builds the same initial model from the
  run's seed, then seeds its training randomness from ``(seed, rank)`` (running/session.py; the reference
  code seeds ``seed + rank``).
- Only rank 0 prints, writes results and checkpoints.

Note on "the same global batch": the per-task losses are means over a process's valid pixels and
DDP averages the processes' gradients, so N × B/N equals 1 × B exactly in exact arithmetic only when
every process's batch has the same number of valid pixels and the loss is linear in the batch
(true for ``synth``'s cross-entropy, L1 and fixed-weight BCE losses, where every pixel is valid; not
for the balanced BCE of saliency, whose positive weight is a per-batch ratio). That is the
reference behaviour (DiTASK), kept on purpose.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler

from mtpeft_bench.errors import UserError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run.

    Attributes:
        rank: global rank (0 writes results and checkpoints).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        backend: ``nccl``, ``gloo`` or None for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """In a process group (torchrun started this process; possibly the only one)."""
        return self.backend is not None or self.world_size > 1

    # -- collectives (all no-ops, or identities, in a single process) --------------------------------
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any(self, flags: Sequence[bool]) -> list[bool]:
        """Element-wise OR of ``flags`` over all ranks (every rank must call it with as many flags)."""
        if not self.distributed:
            return [bool(f) for f in flags]
        tensor = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(v) for v in tensor.tolist()]

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """Average of each value over ranks (float64)."""
        if not self.distributed:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return {k: v / self.world_size for k, v in zip(keys, tensor.tolist())}

    def sum(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects passed between our own processes)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out if self.is_main else None

    def _comm_device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_by_torchrun() -> bool:
    """Whether torchrun (torch.distributed.run) started this process, whatever the number of processes:
    it sets the rendezvous variables below for every process it starts."""
    return all(name in os.environ for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))


def setup(device_name: str, pick_device: Callable[[str], torch.device],
          timeout_s: float = 1800.0) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun prepared (if any) and choose this process's device.

    A process not started by torchrun gets ``pick_device(device_name)`` and no process group.
    Under torchrun each process, even a single one (``--nproc_per_node 1``: the model is then
    trained inside DDP, as in a multi-GPU run), joins the group and takes ``cuda:LOCAL_RANK``
    (NCCL) when CUDA is available and not ``--device cpu``, else the CPU (gloo). The group stays up
    until the interpreter exits, so several runs in one process (a sweep) share it.

    Raises:
        UserError: a device that cannot be used with several processes.
    """
    if not launched_by_torchrun():
        return DistContext(), pick_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name.startswith("cuda:"):
        raise UserError(f"--device {device_name} cannot be used with torchrun: every process takes "
                        "cuda:LOCAL_RANK; pass --device cuda (or auto)")
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise UserError("device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process with LOCAL_RANK {local_rank} has no GPU (this node has "
                            f"{torch.cuda.device_count()}); lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(_destroy)
    backend = str(dist.get_backend())
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       backend=backend), device


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (no collisions such as seed + epoch would have)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ShardSampler(Sampler[int]):
    """This rank's indices of a dataset for one epoch.

    Training (``shuffle=True``): a permutation drawn from ``(seed, epoch)``, cut to a multiple of
    ``world_size`` (as ``DistributedSampler(drop_last=True)``), rank ``r`` taking positions
    ``r, r + world, ...``. With a per-rank batch ``b`` the union of the ranks' ``k``-th batches is
    positions ``k·b·world … (k+1)·b·world − 1`` of the permutation: the ``k``-th batch of one process
    with batch ``b·world``.

    Evaluation (``shuffle=False``): rank ``r`` takes the contiguous block
    ``[r·n // world, (r+1)·n // world)``; no index is repeated or dropped. With the same per-process
    batch, the ranks' batches are the single process's batches, split between ranks.

    ``set_epoch(epoch, skip=k)`` starts the epoch's iteration ``k`` samples into this rank's shard
    (resuming in the middle of an epoch); the skip applies to the next iteration only.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.size = size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def indices(self) -> list[int]:
        """This rank's whole shard of the current epoch (ignoring ``skip``)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
            usable = self.size - self.size % self.world_size
            return order[self.rank:usable:self.world_size]
        start = self.rank * self.size // self.world_size
        stop = (self.rank + 1) * self.size // self.world_size
        return list(range(start, stop))

    def __iter__(self) -> Iterator[int]:
        shard = self.indices()
        skip, self.skip = self.skip, 0
        return iter(shard[skip:])

    def __len__(self) -> int:
        if self.shuffle:
            return self.size // self.world_size
        return (self.rank + 1) * self.size // self.world_size - self.rank * self.size // self.world_size


class PerSampleSeed(Dataset):
    """Wraps a dataset so that each item's augmentation draws from ``(seed, epoch, index)``.

    The transforms (tasks/transforms.py) draw from torch's global generator; around each item this
    wrapper forks that generator's state and seeds it per sample, so the global stream the model
    uses (drop path) is untouched and a sample gets the same flips whichever process or worker loads
    it, and whether or not the run was resumed.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, index))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # Everything else (e.g. the split's ids) is the wrapped dataset's.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def sampler_factory(ctx: DistContext, seed: int) -> Callable[[Dataset, bool], Sampler | None]:
    """For :func:`mtpeft_bench.running.build.make_loaders`: shuffled shards for training (also in a single
    process, so the order depends only on the seed and epoch), contiguous shards for evaluation."""

    def make(dataset: Dataset, train: bool) -> Sampler | None:
        if not train and not ctx.distributed:
            return None
        return ShardSampler(len(dataset), ctx.rank, ctx.world_size, shuffle=train, seed=seed)  # type: ignore[arg-type]

    return make


def set_epoch(loader: Any, epoch: int, skip_batches: int = 0) -> None:
    """Tell the loader's sampler and dataset the epoch; skip the first ``skip_batches`` batches."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, ShardSampler):
        sampler.set_epoch(epoch, skip=skip_batches * loader.batch_size)
    elif skip_batches:
        raise RuntimeError("resuming inside an epoch needs the ShardSampler")
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, PerSampleSeed):
        dataset.set_epoch(epoch)


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch of all ranks (for gloo/CPU).

    The per-channel sum, sum of squares and count are all-reduced with the differentiable
    ``torch.distributed.nn.functional.all_reduce``, so the gradient flows through the global
    statistics as in torch's ``SyncBatchNorm`` (which runs only on GPUs). Moments are accumulated in
    float64. Running statistics use the unbiased global variance, as ``BatchNorm2d`` does. Outside
    training, or in a single process, it is a plain ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        x64 = x.double()
        count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
        stats = torch.cat([x64.sum(dim=(0, 2, 3)), (x64 * x64).sum(dim=(0, 2, 3)), count])
        stats = all_reduce(stats)
        channels = x.shape[1]
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels:2 * channels] / n - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        scale = torch.rsqrt(var + self.eps)
        out = (x64 - mean[None, :, None, None]) * scale[None, :, None, None]
        out = out.to(x.dtype)
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by its global-batch version (in place where possible)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossRankBatchNorm2d):
            new = CrossRankBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                       module.track_running_stats)
            if module.affine:
                new.weight = module.weight  # the same Parameter objects: optimizer and reports see them
                new.bias = module.bias
            if module.track_running_stats:
                new.running_mean = module.running_mean
                new.running_var = module.running_var
                new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module.add_module(name, convert(child))
        return module

    return convert(model)


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """The model to train: ``model`` itself in one process, else wrapped in DDP.

    ``find_unused_parameters`` comes from the encoder's attribute of that name (a method whose
    parameters do not all get a gradient every step declares it; methods/base.py).
    """
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = convert_sync_bn(model, device)
    encoder = getattr(model, "encoder", model)
    unused = bool(getattr(encoder, "find_unused_parameters", False))
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)
