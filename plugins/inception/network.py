"""InceptionV3 as used for FID (the TensorFlow graph ``inception-2015-12-05`` as ported by
pytorch-fid), and the loading of its weights from a local file. Nothing is ever downloaded.

The parameter names are those of torchvision's ``Inception3(num_classes=1008,
aux_logits=False)``, so pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` loads as it is.
It differs from torchvision's ImageNet network in the ways that FID's TensorFlow graph does:

* the average pools inside the ``Mixed_5*``, ``Mixed_6b..e`` and ``Mixed_7b`` blocks exclude
  the zero padding from the mean (``count_include_pad=False``);
* ``Mixed_7c`` pools its pool branch with a 3x3 *max* pool (stride 1, padding 1);
* the classifier has 1008 outputs (1000 ImageNet classes and 8 unused ones).

Input: (N, 3, 299, 299) in [-1, 1]. Output of :meth:`InceptionV3.forward`: the 2048
``pool_3`` features (the global average of ``Mixed_7c``); :meth:`InceptionV3.logits` maps them
to the 1008 logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.errors import ToolkitError, UsageError

FEATURES = 2048
CLASSES = 1008


class Conv(nn.Module):
    """Convolution without bias, batch norm (epsilon 1e-3), ReLU: torchvision's ``BasicConv2d``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b, 5c, 5d: 35x35
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1 = Conv(cin, 48, 1)
        self.branch5x5_2 = Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):  # Mixed_6b..6e: 17x17, factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([self.branch1x1(x),
                          self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          double,
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = Conv(cin, 192, 1)
        self.branch3x3_2 = Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        seven = x
        for i in range(1, 5):
            seven = getattr(self, f"branch7x7x3_{i}")(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (average pool), Mixed_7c (max pool): 8x8
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(single), self.branch3x3_2b(single),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
                          self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """(N, 3, 299, 299) in [-1, 1] -> (N, 2048) ``pool_3`` features; :meth:`logits` -> (N, 1008)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 299 -> 147
        x = F.max_pool2d(x, 3, stride=2)  # -> 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # -> 71
        x = F.max_pool2d(x, 3, stride=2)  # -> 35
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)  # 35 -> 17 (Mixed_6a) -> 8 (Mixed_7a)
        return x.mean(dim=(2, 3))

    def logits(self, features, bias: bool = True):
        return F.linear(features, self.fc.weight, self.fc.bias if bias else None)


def load_inception(path: str | Path, device: str = "cpu") -> InceptionV3:
    """An :class:`InceptionV3` in eval mode with the weights in ``path``: a safetensors file or a
    torch ``state_dict`` (read with ``weights_only=True``, so no code runs), e.g. pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``. Errors name the file and the keys that differ."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"{path}: no such Inception weight file. The fid and inception_score metrics never "
                         f"download weights; download pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                         f"yourself and give its path as the metric's weights option")
    with open(path, "rb") as handle:
        head = handle.read(9)
    try:
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # either reader raises its own types for a corrupt or foreign file
        raise ToolkitError(f"{path}: not a readable weight file: neither safetensors nor a torch state_dict "
                           f"({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ToolkitError(f"{path}: expected a state_dict (a mapping of parameter names to tensors), got "
                           f"{type(state).__name__}")
    network = InceptionV3()
    expected = network.state_dict()
    # BatchNorm's step counters are not used in eval mode; files written before torch 0.4.1 lack them.
    optional = {name for name in expected if name.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(f"{name} {tuple(state[name].shape)} (expected {tuple(expected[name].shape)})"
                      for name in set(state) & set(expected) if state[name].shape != expected[name].shape)
    if missing or unexpected or reshaped:
        problems = [f"{label} {_some(names)}" for label, names in
                    (("missing keys:", missing), ("unexpected keys:", unexpected), ("wrong shapes:", reshaped))
                    if names]
        raise ToolkitError(f"{path}: not the weights of the FID InceptionV3 (pytorch-fid's "
                           f"pt_inception-2015-12-05-6726825d.pth layout); " + "; ".join(problems))
    network.load_state_dict({name: value.float() if value.is_floating_point() else value
                             for name, value in state.items()}, strict=False)
    try:
        return network.eval().requires_grad_(False).to(device)
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"Inception network: cannot use device {device!r} ({error})") from None


def _some(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
