"""Paths of the repository, for tests."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def data_missing(config_path: Path) -> bool:
    """Whether a shipped config trains on a data file that is not here and that it cannot build
    (the paper configs' ImageNet latents, CIFAR-10)."""
    import yaml

    data = yaml.safe_load(Path(config_path).read_text()).get("data")
    return (isinstance(data, dict) and bool(data.get("path")) and not data.get("source")
            and not (REPO / data["path"]).exists())


_ONE_DIT_BLOCK = ("model.depth=1", "model.width=256", "data.shape=[4, 8, 8]")
#: Paper configs whose code path the suite runs (smoke runs, parity), one per objective,
#: schedule and backbone, with what makes each fit the suite: one block of its architecture at
#: width 256 on 8x8 data (the layers are the same; XL/2's 676M parameters do not fit this
#: machine's tests, and width 1152 took a float64 parity run 36 s against 22 s),
#: the U-Net at one level and width 32 (JAX compiled its MeanFlow step in 31, 40 and 70 s at 1, 2 and 3 levels).
#: meanflow_b2 and meanflow_l2 differ from meanflow_xl in sizes and guidance numbers only; their
#: settings run on digits through configs/twins (tests/test_twins.py).
PAPER_SMALLER = {"meanflow_xl.yaml": _ONE_DIT_BLOCK, "meanflow_xl_improved.yaml": _ONE_DIT_BLOCK,
                 "splitmeanflow_xl.yaml": _ONE_DIT_BLOCK,
                 "meanflow_cifar10.yaml": ("model.blocks=1", "model.channel_mult=[2]", "model.channels=32",
                                           "data.shape=[3, 8, 8]")}
PAPER_PATHS = tuple(PAPER_SMALLER)
