"""Data parallelism for the JAX engine: ``jax.sharding`` over every device, no code of its own.

Automatic whenever JAX sees more than one device (``jax.device_count()``: all local GPUs or
TPU cores, or several CPU devices)::

    toolkit run CONFIG --backend jax                                   # every local GPU / TPU core
    XLA_FLAGS=--xla_force_host_platform_device_count=2 toolkit run CONFIG --backend jax   # 2 CPU devices
    CUDA_VISIBLE_DEVICES=0 toolkit run CONFIG --backend jax            # one GPU: no sharding

The engine builds a one-axis :class:`jax.sharding.Mesh` (axis ``"data"``) over the devices,
places the batch, the objective's draws and the noise split along their first axis
(``NamedSharding(mesh, PartitionSpec("data"))``) and the model, optimiser state and EMA
weights replicated (``PartitionSpec()``). The jit-compiled step is the single-device program:
XLA partitions it over the mesh and adds the all-reduce of the gradients, so the loss is the
global batch's whatever the number of devices. ``run.batch_size`` is the *global* batch and
must be divisible by the number of devices (checked, with an error naming both). Evaluation
and sampling run on replicated inputs.

Several hosts: start the same command on every host with ``JAX_NUM_PROCESSES`` (the number of
hosts) and ``JAX_PROCESS_ID`` (0, 1, ...) set, and ``JAX_COORDINATOR_ADDRESS=host0:port``;
the engine then calls :func:`jax.distributed.initialize` before anything else (on Slurm, Open MPI
or Cloud TPU, ``JAX_NUM_PROCESSES`` alone is enough: JAX detects the rest). The mesh then spans
every host's devices; each host draws the same global batch (a pure function of (seed, step))
and places only its own devices' part of it. Only process 0 writes files. This path could not
be tested on one machine with one CPU; the single-host path is tested in
``tests/test_distributed.py``.
"""

from __future__ import annotations

import os

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from toolkit.errors import UsageError

AXIS = "data"


def initialize_hosts() -> bool:
    """``jax.distributed.initialize`` when ``JAX_NUM_PROCESSES`` > 1 (before any computation)."""
    processes = int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and processes <= 1:
        # torchrun's processes would each train the whole batch and all write the same files
        raise UsageError(f"--backend jax was launched by torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); JAX "
                         f"uses every device of one process by itself, and several hosts through "
                         f"JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_COORDINATOR_ADDRESS: run it without torchrun")
    if processes <= 1 or jax.distributed.is_initialized():
        return False
    process_id = os.environ.get("JAX_PROCESS_ID")  # JAX reads JAX_COORDINATOR_ADDRESS itself
    jax.distributed.initialize(num_processes=processes, process_id=None if process_id is None else int(process_id))
    return True


def check_split(batch_size: int, devices: int) -> None:
    if batch_size % devices:
        raise UsageError(f"run.batch_size={batch_size} (the global batch) is not divisible by the number of JAX "
                         f"devices ({devices}): every device must get the same share; change run.batch_size, "
                         f"or the devices JAX sees (XLA_FLAGS, CUDA_VISIBLE_DEVICES)")


class SingleDevice:
    """One device: arrays stay where JAX puts them."""

    is_main = True

    def info(self) -> dict:
        return {"processes": 1, "devices": 1}

    def shard(self, *trees):
        return trees

    def replicate(self, tree):
        return tree


class DataSharding:
    """The batch split along axis 0 over a one-axis mesh of all devices, the rest replicated."""

    def __init__(self, batch_size: int, devices=None):
        devices = list(jax.devices() if devices is None else devices)
        check_split(batch_size, len(devices))
        self.mesh = Mesh(np.array(devices), (AXIS,))
        self.batch = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_size = batch_size
        self.is_main = jax.process_index() == 0

    def info(self) -> dict:
        return {"processes": jax.process_count(), "devices": self.mesh.size, "via": "jax.sharding",
                "per_device_batch": self.batch_size // self.mesh.size}

    def _put(self, array, sharding):
        if jax.process_count() == 1:
            return jax.device_put(array, sharding)
        # Several hosts: every host holds the same global value and gives its own devices' slices.
        host = np.asarray(array)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def shard(self, *trees):
        """Every array with the global batch as its first axis split over the devices (others
        replicated); ``None`` stays ``None``."""
        def place(leaf):
            split = np.ndim(leaf) > 0 and leaf.shape[0] == self.batch_size
            return self._put(leaf, self.batch if split else self.replicated)

        return tuple(jax.tree_util.tree_map(place, tree) for tree in trees)

    def replicate(self, tree):
        """A copy of every array of ``tree`` (a model, an optimiser state) on every device."""
        arrays, static = eqx.partition(tree, eqx.is_array)
        return eqx.combine(jax.tree_util.tree_map(lambda a: self._put(a, self.replicated), arrays), static)


def data_sharding(batch_size: int) -> SingleDevice | DataSharding:
    """Sharding over all devices when there are several (after joining other hosts if asked)."""
    initialize_hosts()
    return DataSharding(batch_size) if jax.device_count() > 1 else SingleDevice()
