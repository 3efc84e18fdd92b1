"""The PyTorch training engine: model, AdamW, one step, sampling, weights by name."""

from __future__ import annotations

import contextlib
import copy
import math
import os

import attrs
import numpy as np
import torch

from toolkit.backends.torch import TorchOptions
from toolkit.backends.torch.distributed import data_parallel
from toolkit.backends.torch.jvp import jvp, jvp_mode
from toolkit.backends.torch.ops import OPS
from toolkit.errors import UsageError
from toolkit.interfaces import in_numerics

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchEngine:
    #: the op table objectives are written against (toolkit/ops.py)
    ops = OPS

    def __init__(self, config, registry, spec):
        self.matmul_precision = config.run.matmul_precision  # "high" allows TF32 on GPUs
        self._build(config, registry, spec)

    @contextlib.contextmanager
    def numerics(self):
        """The float32 matrix-product precision is torch's process-wide setting: this engine's,
        for the duration of each call."""
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.matmul_precision)
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)

    @in_numerics
    def _build(self, config, registry, spec):
        self.config, self.spec = config, config.network_spec(spec)
        spec = self.spec
        self.dtype = DTYPES[config.run.dtype]
        self.options = config.backend_options("torch", TorchOptions())
        self.device = _device(self.options.device)
        if self.device.type == "cpu":
            torch.set_num_threads(self.options.thread_count())  # process-wide, like the generator
        backbone = registry.load("backbone", config.model.name, "torch")
        # initialised on the CPU (the same weights whatever the device), then moved; from the
        # run's seed, in a fork of torch's global generator that leaves it as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.run.seed)
            self.model = backbone(config.model.options, spec).to(self.dtype).to(self.device)
        objective = registry.load("objective", config.objective.name, "torch")
        self.objective = objective(config.objective.options, spec, self.ops)
        o = config.optimizer
        # fused: the one implementation that can skip a step on a flag left on the device
        # (``found_inf``, GradScaler's protocol), so a non-finite step needs no host sync
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                           weight_decay=o.weight_decay, fused=True)
        #: one averaged copy of the model per ``ema.decays`` entry, in that order
        self.ema_models = [copy.deepcopy(self.model).requires_grad_(False) for _ in config.ema.decays]
        #: DistributedDataParallel when launched by torchrun (backends/torch/distributed.py), else a
        #: no-op; the loss goes through ``replicas.module``, everything else uses ``self.model``
        self.replicas = data_parallel(config, self.model)
        #: only the main process writes files (run.json, events, checkpoints, samples)
        self.is_main = self.replicas.is_main
        self.data_parallel = self.replicas.info()
        if self.replicas.world_size > 1:  # torch.func.jvp fails through the DDP wrapper
            self.options = attrs.evolve(self.options, jvp="forward_ad")

        def loss_fn(x, y, draws, noise):
            return self.objective.loss(self.replicas.module, x, y, draws, noise)

        self.loss_fn = torch.compile(loss_fn) if self.options.compile else loss_fn
        self.loss_fn = self.replicas.explain_failures(self.loss_fn, compiled=self.options.compile)

    @in_numerics
    def tensor(self, array: np.ndarray | None) -> torch.Tensor | None:
        if array is None:
            return None
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def _backward(self, batch, draws, noise):
        x, y, noise = self.tensor(batch.x), self.tensor(batch.y), self.tensor(noise)
        # bf16: matrix products and convolutions in bfloat16, the rest (time embeddings, norms,
        # the loss) in float32; weights, gradients and AdamW stay float32.
        mixed = torch.autocast(self.device.type, dtype=torch.bfloat16,
                               enabled=self.config.run.mixed_precision == "bf16")
        with jvp_mode(self.options.jvp), mixed:
            loss, parts = self.loss_fn(x, y, {k: self.tensor(v) for k, v in draws.items()}, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, parts

    @in_numerics
    def gradients(self, batch, draws, noise):
        loss, parts = self._backward(batch, draws, noise)
        grads = {name: p.grad.detach().cpu().numpy().copy() for name, p in self.model.named_parameters()}
        return float(loss.detach()), {k: float(v) for k, v in parts.items()}, grads

    @in_numerics
    def regression(self, batch, draws, noise):
        if not hasattr(self.objective, "regression"):
            return None
        with torch.no_grad(), jvp_mode(self.options.jvp):
            prediction, target = self.objective.regression(
                self.model, self.tensor(batch.x), self.tensor(batch.y),
                {k: self.tensor(v) for k, v in draws.items()}, self.tensor(noise))
        return prediction.cpu().numpy(), target.cpu().numpy()

    @torch.no_grad()
    @in_numerics
    def predict(self, x, t, r, y=None, conditions=None):
        return self.model(*(self.tensor(a) for a in (x, t, r, y, conditions))).cpu().numpy()

    @in_numerics
    def jvp(self, x, t, r, y, v, conditions=None):
        x, t, r, y, v, c = (self.tensor(a) for a in (x, t, r, y, v, conditions))
        with torch.no_grad(), jvp_mode(self.options.jvp):
            u, dudt = jvp(lambda x_, t_, r_: self.model(x_, t_, r_, y, c), (x, t, r),
                          (v, torch.ones_like(t), torch.zeros_like(r)))
        return u.cpu().numpy(), dudt.cpu().numpy()

    @in_numerics
    def train_step(self, batch, draws, lr, noise):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, parts = self._backward(*self.replicas.shard(batch, draws, noise))  # this process's share
        loss, parts = self.replicas.mean(loss, parts)  # the global batch's, before the finiteness check
        clip = self.config.optimizer.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip is not None else math.inf)
        loss = loss.detach()
        # Nothing here reads a value back: the fused AdamW skips its whole update (moments and
        # step count included) when ``found_inf`` is 1, a flag that stays on the device.
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        self.optimizer.found_inf = (~finite).to(torch.float32)
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        return {"loss": loss, "grad_norm": grad_norm.detach(),
                **{k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in parts.items()}}

    @in_numerics
    def close(self) -> None:
        """Leave the process group (torchrun); called once when training ends, on every rank."""
        self.replicas.close()

    @torch.no_grad()
    @in_numerics
    def sample(self, sampler, noise, y):
        self.model.eval()
        try:
            def model_fn(z, t, r, labels, conditions=None):
                batch, row = (z.shape[0],), self.spec.condition_row(conditions)
                return self.model(z, torch.full(batch, t, dtype=self.dtype, device=self.device),
                                  torch.full(batch, r, dtype=self.dtype, device=self.device), labels,
                                  None if row is None else torch.tensor(row, dtype=self.dtype, device=self.device)
                                  .expand(z.shape[0], -1))
            return sampler.sample(model_fn, self.tensor(noise), self.tensor(y)).cpu().numpy()
        finally:
            self.model.train()

    @torch.no_grad()
    @in_numerics
    def update_ema(self, decays):
        parameters = [p.detach() for p in self.model.parameters()]
        for average, decay in zip(self.ema_models, decays):
            for a, p in zip(average.parameters(), parameters):
                a.lerp_(p, 1.0 - decay)  # a + (1 - decay) (p - a), as the JAX engine
            for a, b in zip(average.buffers(), self.model.buffers()):
                a.copy_(b)

    @in_numerics
    def ema_arrays(self):
        return [_numpy_state(average) for average in self.ema_models]

    @in_numerics
    def load_ema_arrays(self, averages):
        for average, arrays in zip(self.ema_models, averages):
            _load_state(average, arrays)

    @in_numerics
    def optimizer_arrays(self):
        return self._optimizer_arrays(copy=True)

    def _optimizer_arrays(self, copy: bool) -> dict[str, np.ndarray]:
        arrays = {}
        for name, parameter in self.model.named_parameters():
            state = self.optimizer.state.get(parameter)
            if state:  # empty before the first step
                arrays["step"] = np.asarray(float(state["step"]))
                arrays[f"mu.{name}"] = _numpy(state["exp_avg"], copy)
                arrays[f"nu.{name}"] = _numpy(state["exp_avg_sq"], copy)
        return arrays

    @in_numerics
    def load_optimizer_arrays(self, arrays):
        if not arrays:
            return
        step = float(np.asarray(arrays["step"]).reshape(-1)[0])
        for name, parameter in self.model.named_parameters():
            self.optimizer.state[parameter] = {
                "step": torch.tensor(step, dtype=torch.float32, device=parameter.device),  # where fused AdamW keeps it
                "exp_avg": torch.from_numpy(np.asarray(arrays[f"mu.{name}"])).reshape(parameter.shape).to(parameter),
                "exp_avg_sq": torch.from_numpy(np.asarray(arrays[f"nu.{name}"])).reshape(parameter.shape)
                .to(parameter)}

    @in_numerics
    def state_arrays(self):
        return _numpy_state(self.model)

    @in_numerics
    def load_state_arrays(self, arrays):
        _load_state(self.model, arrays)

    @in_numerics
    def array_views(self):
        # NumPy views of the CPU tensors themselves (a GPU tensor's is a copy of it alone)
        return (_numpy_state(self.model, copy=False), [_numpy_state(a, copy=False) for a in self.ema_models],
                self._optimizer_arrays(copy=False))


def _numpy(tensor: torch.Tensor, copy: bool) -> np.ndarray:
    """``tensor`` in NumPy. ``copy``: one of its own, as the interface promises; a view would
    change under the next in-place optimiser step (and JAX on the CPU may wrap NumPy memory
    without copying it). ``.cpu()`` already copied a GPU tensor."""
    array = tensor.detach().cpu().numpy()
    return array.copy() if copy and tensor.device.type == "cpu" else array


def _numpy_state(module: torch.nn.Module, copy: bool = True) -> dict[str, np.ndarray]:
    return {name: _numpy(value, copy) for name, value in module.state_dict().items()}


def _load_state(module: torch.nn.Module, arrays) -> None:
    state = module.state_dict()
    missing = sorted(set(state) - set(arrays))
    if missing:
        raise ValueError(f"weights missing for: {', '.join(missing)}")
    for name, value in state.items():  # as the JAX engine's load_named_arrays: by size, naming the weight
        if np.size(arrays[name]) != value.numel():
            raise ValueError(f"{name}: got shape {np.shape(arrays[name])}, expected {tuple(value.shape)}")
    # np.require copies only arrays torch may not wrap (read-only ones, e.g. from JAX or a file)
    module.load_state_dict({name: torch.from_numpy(np.require(arrays[name], requirements="W")).reshape(value.shape)
                            .to(value.dtype) for name, value in state.items()})


def _device(name: str) -> torch.device:
    """``auto``: this process's GPU when there is one (``LOCAL_RANK`` under torchrun), else the CPU."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise UsageError(f"backend.torch.device: got {name!r}, expected auto, cpu, cuda or cuda:N ({error})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"backend.torch.device: got {name!r}, but torch sees no GPU (CPU-only build, or none "
                             f"visible); expected auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")
