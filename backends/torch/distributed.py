"""Data parallelism for the PyTorch engine: ``DistributedDataParallel`` under ``torchrun``.

Launch one process per device with ``torchrun``; nothing in the config changes::

    torchrun --standalone --nproc_per_node=N $(which toolkit) run CONFIG --backend torch
    # several machines: torchrun --nnodes=M --node_rank=I --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT ...

When ``WORLD_SIZE`` > 1 (set by torchrun) the engine joins the process group (``gloo`` for a model
on the CPU, ``nccl`` for one on a GPU: ``backend.torch.device``) and trains
through a ``DistributedDataParallel`` wrapper. ``run.batch_size`` stays the *global* batch: every
process draws the same global batch, objective draws and noise (pure functions of (seed, step),
see :mod:`toolkit.train`) and trains on its share of them; DDP averages the gradients, which
is the gradient of the global-batch mean because every share has the same size. The loss and
its parts are averaged over the processes, so each process logs the global batch's loss; the
gradient norm is taken after DDP's averaging and is the global one, so every process skips a
non-finite step alike and the replicas stay equal. Only rank 0 writes files
(``engine.is_main``); evaluation runs there alone.

Which examples a process gets: every ``world_size``-th one, starting at its rank (a strided
split, not contiguous blocks). The MeanFlow-family objectives take the JVP only on a *leading*
slice of the batch whose length they compute from the batch they see (``options.averaged(B)``,
the pairs with r < t; see :func:`toolkit.draws.draw_time_pairs`). With contiguous
blocks the first process would get all of those pairs but take the JVP for only half of
them, and the loss would no longer be the single-process one. The strided split gives every
process ``averaged(B) / world_size`` of them at the front of its share, which is exactly what
``averaged(B / world_size)`` asks for, provided ``averaged(B)`` is divisible by the number of
processes: checked here with the error naming ``run.batch_size`` and ``objective.ratio``.
Objectives whose loss is otherwise a mean of per-example terms need nothing else. Parts that
are means over a data-dependent subset (``mse_r_lt_t``) are averaged over the processes: exact
when every process has as many examples of the subset, as the split above ensures.

JVPs go through the DDP wrapper with forward-mode dual tensors (``backend.torch.jvp`` is set to
``forward_ad`` under DDP): ``torch.func.jvp`` through the wrapper fails on the second step of the
compiled (``joint``) path, and calling the inner module instead would bypass DDP's gradient
reduction in that path. ``tests/test_distributed.py`` checks that the gradients of a two-process
step equal the single-process gradient of the global batch and that the replicas stay equal.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import torch
import torch.distributed as dist

from toolkit.errors import UsageError
from toolkit.interfaces import Batch


def world_size() -> int:
    """The number of processes torchrun started (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_split(config, processes: int) -> None:
    """Raise :class:`UsageError` unless the global batch splits evenly over ``processes``."""
    batch_size = config.run.batch_size
    if batch_size % processes:
        raise UsageError(f"run.batch_size={batch_size} (the global batch) is not divisible by the world size "
                         f"({processes} processes): every process must train on the same number of examples")
    averaged = getattr(config.objective.options, "averaged", None)
    if callable(averaged):
        leading, share = averaged(batch_size), averaged(batch_size // processes)
        if leading % processes or share != leading // processes:
            ratio = getattr(config.objective.options, "ratio", None)
            raise UsageError(
                f"run.batch_size={batch_size} with objective.ratio={ratio} gives {leading} pairs with r < t, which "
                f"do not split evenly over the world size ({processes} processes; each process's share of "
                f"{batch_size // processes} would take {share}): choose run.batch_size and objective.ratio so that "
                f"round(ratio * batch_size) is divisible by {processes}")


class SingleProcess:
    """No data parallelism: the engine's one process trains on the whole batch."""

    rank, world_size, is_main = 0, 1, True

    def __init__(self, model: torch.nn.Module):
        self.module = model

    def info(self) -> dict:
        return {"processes": 1, "devices": 1}

    def explain_failures(self, loss_fn, compiled: bool):
        return loss_fn

    def shard(self, batch, draws, noise):
        return batch, draws, noise

    def mean(self, loss, parts):
        return loss, parts

    def close(self) -> None:
        pass


class DataParallel:
    """One process of a torchrun job: ``module`` is the DDP wrapper of the engine's model."""

    def __init__(self, config, model: torch.nn.Module):
        processes = world_size()
        check_split(config, processes)  # before joining, so a bad config fails fast on every rank
        device = next(model.parameters()).device
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.owns_group = not dist.is_initialized()
        if self.owns_group:  # torchrun's environment (MASTER_ADDR, RANK, ...) says where to meet
            dist.init_process_group(self.backend)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.batch_size = config.run.batch_size
        # DDP broadcasts rank 0's weights at construction (all ranks seeded alike anyway).
        self.module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        self.device = device

    def info(self) -> dict:
        return {"processes": self.world_size, "devices": self.world_size, "via": f"torch DDP ({self.backend})",
                "per_device_batch": self.batch_size // self.world_size}

    def explain_failures(self, loss_fn, compiled: bool):
        """``loss_fn`` with the one known failure of DDP turned into a usage error: under
        ``torch.compile``, a JVP through the DDP wrapper reaches the model compiled on its own
        (dynamo breaks the graph at DDP's forward), which has no forward-mode derivative."""
        if not compiled:
            return loss_fn

        def guarded(*args):
            try:
                return loss_fn(*args)
            except NotImplementedError as error:
                if "forward mode AD" not in str(error):
                    raise
                raise UsageError("backend.torch.compile=true does not work under torchrun for an objective that "
                                 "takes a JVP: torch.compile compiles the model behind DistributedDataParallel "
                                 "without forward-mode derivatives; train eagerly (backend.torch.compile=false) "
                                 "or in one process") from None

        return guarded

    def _share(self, array):
        """Every ``world_size``-th example from ``rank`` on (see the module docstring)."""
        if array is None or np.ndim(array) == 0 or len(array) != self.batch_size:
            return array
        return array[self.rank::self.world_size]

    def shard(self, batch: Batch, draws, noise):
        """This process's share of the global batch, draws and noise."""
        return (Batch(self._share(batch.x), self._share(batch.y)), {k: self._share(v) for k, v in draws.items()},
                self._share(noise))

    def mean(self, loss: torch.Tensor, parts: dict):
        """The loss and its parts averaged over the processes (one all-reduce), detached, left on
        the device (read back only when the training loop logs them)."""
        names = list(parts)
        values = torch.stack([loss.detach()] + [torch.as_tensor(parts[k], dtype=loss.dtype).detach()
                                                for k in names]).to(self.device)
        dist.all_reduce(values)
        values = values / self.world_size
        return values[0], {k: values[i + 1] for i, k in enumerate(names)}

    def divergence(self, model: torch.nn.Module) -> float:
        """The largest difference of any weight between the replicas (0 when in sync); collective."""
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(self.device)
        high, low = flat.clone(), flat.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        return float((high - low).abs().max())

    def close(self) -> None:
        # DDP's reducer must be gone before the process group and the interpreter: one still
        # alive at exit aborts the process now and then ("terminate called without an active
        # exception", gloo, torch 2.13; about 1 run in 3 under load, none once it is deleted).
        self.module = None
        gc.collect()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def data_parallel(config, model: torch.nn.Module) -> SingleProcess | DataParallel:
    """DDP when launched by torchrun with several processes, else the single-process no-op."""
    return DataParallel(config, model) if world_size() > 1 else SingleProcess(model)
