"""Process-group helpers for ``torchrun``: who am I, gather a batch from every rank, per-rank shards.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything degrades to one process.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist

from ...environment import DistEnv, dist_env
from ...errors import ConfigError


def init_distributed(device: str = "cpu", backend: Optional[str] = None) -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment (once per process).

    The backend is NCCL for CUDA devices and gloo otherwise, unless ``backend`` names one.
    Returns ``DistEnv()`` (rank 0 of 1) when the environment describes no group.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    env = dist_env()
    if env.world_size <= 1:
        return DistEnv()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed, cannot run under torchrun")
    backend = backend or ("nccl" if str(device).startswith("cuda") else "gloo")
    if str(device).startswith("cuda"):
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend)
    return current()


def current() -> DistEnv:
    """The running group's ``DistEnv`` (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    return DistEnv(dist.get_rank(), dist.get_world_size(), dist_env().local_rank)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (n_r, ...) from every rank in rank order -> (sum n_r, ...).

    Ranks may hold different row counts; rows are padded to the largest for the collective and
    trimmed after. With one process, returns ``t``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_ = [int(s.item()) for s in sizes]
    top = max(sizes_)
    if t.shape[0] < top:
        pad = t.new_zeros((top - t.shape[0],) + tuple(t.shape[1:]))
        t = torch.cat([t, pad])
    out: List[torch.Tensor] = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes_)])


def average_gradients(params) -> None:
    """Replace each gradient of ``params`` by its mean over the ranks (parameters outside the DDP
    model, e.g. a method's classifier); nothing with one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


STREAM_ORDER = 0  # data order
STREAM_AUGMENT = 1  # augmentation, dropout and other per-epoch randomness
STREAM_METHOD = 2  # a method's own draws (samples of rows, codes, centers)
STREAM_SECOND_MODEL = 3  # the initialisation of a two-network method's second copy of the model


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. run seed, epoch, stream), well mixed so that
    (seed, epoch + 1) and (seed + 1, epoch) give unrelated streams."""
    import numpy as np

    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def shard_indices(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  shuffle: bool = True) -> torch.Tensor:
    """This rank's share of one epoch's order over ``n`` items, as DistributedSampler draws it.

    The permutation depends only on ``(seed, epoch)``, so every rank (and a resumed run) sees the
    same order; it is padded by wrapping to a multiple of ``world_size`` so all ranks take the same
    number of steps, and rank r takes positions r, r + world, ...  Returns int64 (ceil(n / world),).
    """
    if shuffle:
        g = torch.Generator().manual_seed(derive_seed(seed, epoch, STREAM_ORDER))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    per_rank = -(-n // world_size)
    total = per_rank * world_size
    if total > n:
        order = torch.cat([order, order[: total - n]])
    return order[rank:total:world_size]
