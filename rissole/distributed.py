"""Data-parallel training under torchrun: which share of every batch this process trains on, and the
gradient all-reduce that makes the shares one global batch.

    torchrun --nproc_per_node=2 -m rissole train --config C.yaml --out RUN     # NCCL on GPUs, gloo on CPUs

Every rank draws the same global batch (rissole.training.batch_indices: a function of seed and step) and
trains on part p of P = world size x train.accumulate parts, rows p, p + P, p + 2P, ... Random draws
of the losses (timesteps, noise, conditioning dropout) go through `randn` / `rand` / `randint` here:
they draw for the whole global batch from the run's generator, the same on every rank, and keep the
part's rows, so the run computes the gradient a single process computes on the same global batch, in
another summation order. After the last part, gradients are summed over ranks (torch.distributed
all_reduce) and divided by P. Rank 0 alone writes checkpoints, logs and progress bars.

The all-reduce is explicit rather than the DistributedDataParallel wrapper: the VQ-GAN's step runs its
encoder, quantiser and decoder as separate calls and its adaptive GAN weight takes gradients inside the
step, which DDP's forward-hooked reducer does not see; one explicit reduction serves every trainer. The
models here are small (below ~10M parameters), where DDP's overlap of communication with backward saves
little.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from rissole_runtime.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


_PART = (0, 1)  # (p, P) of the batch part being computed (batch_part)


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's torchrun rank from the environment (0 outside torchrun), before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def run_lock(out: str | os.PathLike) -> contextlib.AbstractContextManager:
    """The output lock of a training run (rissole_runtime.fileio.output_lock), taken by rank 0 alone: the
    ranks of one torchrun run share --out, a second run into it still fails at once."""
    from rissole_runtime.fileio import output_lock

    return output_lock(out) if launch_rank() == 0 else contextlib.nullcontext()


def world() -> World:
    """This process's place in the process group (rank 0 of 1 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def init(device: str = "auto") -> World:
    """Join torchrun's process group (NCCL when this rank has a GPU, gloo otherwise) and return the world;
    a no-op returning rank 0 of 1 outside torchrun. device 'auto'/'cuda' under NCCL is this rank's GPU."""
    if not launched():
        return World()
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run a single process.")
    if not torch.distributed.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return world()


def finish(ok: bool) -> None:
    """Leave the process group before the interpreter exits. After a command that succeeded, every rank first
    waits for the others (a barrier), so none tears down its gloo connections while another still uses them;
    a rank that finished its share early and exited with the group alive aborted in the gloo teardown
    ('terminate called without an active exception', SIGABRT). After an error there is no barrier: the other
    ranks may never reach it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if ok:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def check_parts(batch_size: int, w: World, accumulate: int = 1) -> int:
    """The number of batch parts (world size x accumulate), refused unless it divides the global batch."""
    if accumulate < 1:
        raise ConfigError(f"train.accumulate must be >= 1, found {accumulate}.")
    parts = w.size * accumulate
    if batch_size % parts:
        raise ConfigError(f"train.batch_size {batch_size} (the global batch) is not divisible by world size {w.size} x "
                          f"train.accumulate {accumulate} = {parts}: every part must hold the same number of rows. "
                          f"Use a batch_size that is a multiple of {parts}.")
    return parts


def rank_device(preference: str) -> str:
    """The device a rank trains on: its own GPU (cuda:LOCAL_RANK) when the run uses CUDA."""
    w = world()
    if w.size > 1 and preference in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{w.local_rank}"
    return preference


@contextlib.contextmanager
def batch_part(p: int, parts: int) -> Iterator[None]:
    """Within the block, random draws of the batch helpers keep part p of `parts` (rows p::parts)."""
    global _PART
    old, _PART = _PART, (p, parts)
    try:
        yield
    finally:
        _PART = old


def _keep(full: torch.Tensor, group: int) -> torch.Tensor:
    """Rows of part p: samples p::P, where a sample is `group` consecutive rows (RISSOLE's b blocks)."""
    p, parts = _PART
    if parts == 1:
        return full
    return full.view(-1, group, *full.shape[1:])[p::parts].reshape(-1, *full.shape[1:])


def _global(n: int) -> int:
    return n * _PART[1]


def randn(shape: tuple[int, ...], generator: torch.Generator, group: int = 1) -> torch.Tensor:
    """Standard normal noise for this part's rows of the global batch (shape[0]: the part's rows)."""
    return _keep(torch.randn((_global(shape[0]), *shape[1:]), generator=generator), group)


def rand(n: int, generator: torch.Generator, group: int = 1) -> torch.Tensor:
    """Uniform [0, 1) draws, one per row of this part."""
    return _keep(torch.rand(_global(n), generator=generator), group)


def randint(high: int, n: int, generator: torch.Generator, group: int = 1) -> torch.Tensor:
    """Integers in [0, high), one per row of this part."""
    return _keep(torch.randint(0, high, (_global(n),), generator=generator), group)


def all_reduce_gradients(params: Iterator[torch.nn.Parameter], parts: int) -> None:
    """Sum every gradient over the ranks and divide by the number of batch parts (ranks x accumulation):
    the mean over the global batch. Parameters without a gradient this step are skipped on every rank
    alike (every rank runs the same code path)."""
    w = world()
    grads = [p.grad for p in params if p.grad is not None]
    if w.size > 1 and grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        for g, part in zip(grads, torch.split(flat, [g.numel() for g in grads])):
            g.copy_(part.view_as(g))
    if parts > 1:
        for g in grads:
            g.div_(parts)


def means_over_ranks(values: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Logged scalars averaged over ranks in one all-reduce (a loss then equals the single-process loss of the
    global batch)."""
    w = world()
    if w.size == 1:
        return {k: float(v) for k, v in values.items()}
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(x) / w.size for k, x in zip(values, t)}


def mean_over_ranks(value: float | torch.Tensor) -> float:
    """One logged scalar averaged over ranks (means_over_ranks)."""
    return means_over_ranks({"value": value})["value"]


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """An integer or float tensor summed over ranks, in place (e.g. code-usage counts)."""
    if world().size > 1:
        torch.distributed.all_reduce(t)
    return t


def gather_parts(local: torch.Tensor) -> torch.Tensor:
    """This rank's part (rows p::P with P = world size) gathered from every rank, back in global row order."""
    w = world()
    if w.size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(w.size)]
    torch.distributed.all_gather(parts, local.contiguous())
    out = torch.empty((local.shape[0] * w.size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        out[r :: w.size] = part
    return out


def shard_rows(n: int, align: int = 1) -> slice:
    """This rank's contiguous, disjoint share of n rows (sharded preprocessing: encode, embed), cut at
    multiples of `align` (the batch size), so every batch is the one a single process would run and the
    file comes out byte for byte the same."""
    w = world()
    per = -(-(-(-n // align)) // w.size) * align  # whole batches per rank
    return slice(min(n, w.rank * per), min(n, (w.rank + 1) * per))


def share_path(path: str | os.PathLike | None) -> str:
    """Rank 0's temporary output file, on every rank: rank 0 passes the file it created inside its atomic
    write (None when it failed before that), the others pass None and receive it."""
    got = broadcast_object(None if path is None else str(path))
    if got is None:
        from rissole_runtime.errors import RissoleError

        raise RissoleError("rank 0 could not start the output (its error is above); nothing was written.")
    return str(got)


@contextlib.contextmanager
def sharded_output(create: "contextlib.AbstractContextManager[Any]") -> Iterator[Any]:
    """Rank 0 enters `create` (its locked atomic write, which yields (memmap, temporary path)); every rank
    gets the one memmap to fill its rows of (the others open rank 0's temporary file). On exit the map is
    flushed and every rank has written its rows, then rank 0 leaves `create` (the rename) and every rank
    waits until it has."""
    import numpy as np

    w = world()
    if w.size == 1:
        with create as (arr, _):
            yield arr
            arr.flush()
        return
    if not w.main:
        arr = np.load(share_path(None), mmap_mode="r+")
        yield arr
        arr.flush()
        del arr
        barrier()  # the rows are written
        barrier()  # rank 0 has renamed the file into place
        return
    shared = False
    try:
        with create as (arr, tmp):
            share_path(tmp)
            shared = True
            yield arr
            arr.flush()
            barrier()
    except BaseException:
        if not shared:
            broadcast_object(None)
        raise
    barrier()


class TableSharding:
    """rissole.retrieval.neighbours.Sharding under torchrun: query rows split by rank (whole search batches),
    the parts gathered on rank 0."""

    def __init__(self) -> None:
        self.main = world().main

    def rows(self, n: int, align: int) -> slice:
        return shard_rows(n, align)

    def gather(self, ids: Any, scores: Any, n: int) -> Any:
        import numpy as np

        parts: list[Any] = [None] * world().size
        torch.distributed.all_gather_object(parts, (ids, scores))
        if not self.main:
            return None
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def barrier() -> None:
    if world().size > 1:
        torch.distributed.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's value of a picklable object on every rank."""
    if world().size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
