"""The PyTorch backend (plugin). Importing this package does not import torch."""

from toolkit.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    register("torch", {"torch": "toolkit.backends.torch.engine:TorchEngine"},
             summary="PyTorch engine (eager, CPU or CUDA)")
