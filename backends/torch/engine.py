"""The PyTorch training engine: model, AdamW, one step, sampling, weights by name."""

from __future__ import annotations

import math

import numpy as np
import torch

from toolkit.backends.torch import TorchOptions
from toolkit.backends.torch.jvp import jvp, jvp_mode
from toolkit.errors import DivergenceError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchEngine:
    def __init__(self, config, registry, spec):
        self.config, self.spec = config, spec
        self.dtype = DTYPES[config.run.dtype]
        torch.set_float32_matmul_precision(config.run.matmul_precision)  # "high" allows TF32 on GPUs
        torch.manual_seed(config.run.seed)
        backbone = registry.load("backbone", config.model.name, "torch")
        self.model = backbone(config.model.options, spec).to(self.dtype)
        objective = registry.load("objective", config.objective.name, "torch")
        self.objective = objective(config.objective.options, spec)
        o = config.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.generator = torch.Generator().manual_seed(config.run.seed)
        self.options = config.backend_options("torch", TorchOptions())

        def loss_fn(x, y, draws, noise):
            return self.objective.loss(self.model, x, y, draws, noise)

        self.loss_fn = torch.compile(loss_fn) if self.options.compile else loss_fn

    def tensor(self, array: np.ndarray | None) -> torch.Tensor | None:
        if array is None:
            return None
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def _backward(self, batch, draws, noise):
        x, y = self.tensor(batch.x), self.tensor(batch.y)
        noise = torch.randn(x.shape, generator=self.generator, dtype=self.dtype) if noise is None else self.tensor(noise)
        with jvp_mode(self.options.jvp):
            loss, parts = self.loss_fn(x, y, {k: self.tensor(v) for k, v in draws.items()}, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, parts

    def gradients(self, batch, draws, noise):
        loss, parts = self._backward(batch, draws, noise)
        grads = {name: p.grad.detach().numpy().copy() for name, p in self.model.named_parameters()}
        return float(loss.detach()), {k: float(v) for k, v in parts.items()}, grads

    def regression(self, batch, draws, noise):
        if not hasattr(self.objective, "regression"):
            return None
        with torch.no_grad(), jvp_mode(self.options.jvp):
            prediction, target = self.objective.regression(
                self.model, self.tensor(batch.x), self.tensor(batch.y),
                {k: self.tensor(v) for k, v in draws.items()}, self.tensor(noise))
        return prediction.numpy(), target.numpy()

    @torch.no_grad()
    def predict(self, x, t, r, y=None):
        return self.model(*(self.tensor(a) for a in (x, t, r, y))).numpy()

    def jvp(self, x, t, r, y, v):
        x, t, r, y, v = (self.tensor(a) for a in (x, t, r, y, v))
        with torch.no_grad(), jvp_mode(self.options.jvp):
            u, dudt = jvp(lambda x_, t_, r_: self.model(x_, t_, r_, y), (x, t, r),
                          (v, torch.ones_like(t), torch.zeros_like(r)))
        return u.numpy(), dudt.numpy()

    def train_step(self, batch, draws, lr, noise=None):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, parts = self._backward(batch, draws, noise)
        clip = self.config.optimizer.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                         clip if clip is not None else math.inf))
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) or not math.isfinite(grad_norm):
            raise DivergenceError(f"non-finite {'loss' if not math.isfinite(loss_value) else 'gradient'} "
                                  f"(loss {loss_value}, gradient norm {grad_norm})")
        self.optimizer.step()
        return {"loss": loss_value, "grad_norm": grad_norm, **{k: float(v) for k, v in parts.items()}}

    @torch.no_grad()
    def sample(self, sampler, noise, y):
        self.model.eval()
        try:
            def model_fn(z, t, r, labels):
                batch = (z.shape[0],)
                return self.model(z, torch.full(batch, t, dtype=self.dtype),
                                  torch.full(batch, r, dtype=self.dtype), labels)
            return sampler.sample(model_fn, self.tensor(noise), self.tensor(y)).numpy()
        finally:
            self.model.train()

    def state_arrays(self):
        # Copies: a view would change under the next in-place optimiser step (and JAX on the
        # CPU may wrap NumPy memory without copying it).
        return {name: value.detach().cpu().numpy().copy() for name, value in self.model.state_dict().items()}

    def load_state_arrays(self, arrays):
        state = self.model.state_dict()
        missing = sorted(set(state) - set(arrays))
        if missing:
            raise ValueError(f"weights missing for: {', '.join(missing)}")
        self.model.load_state_dict({name: torch.from_numpy(np.asarray(arrays[name])).reshape(value.shape)
                                    .to(value.dtype) for name, value in state.items()})
