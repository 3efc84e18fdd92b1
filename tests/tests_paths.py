"""Paths of the repository, for tests."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def data_missing(config_path: Path) -> bool:
    """Whether a shipped config trains on a data file that is not here and that it cannot build
    (the paper configs' ImageNet latents)."""
    import yaml

    data = yaml.safe_load(Path(config_path).read_text()).get("data")
    return (isinstance(data, dict) and bool(data.get("path")) and not data.get("source")
            and not (REPO / data["path"]).exists())


#: Paper configs whose code path the suite runs (smoke runs, parity at two blocks): one per
#: objective/schedule. meanflow_b2 and meanflow_l2 differ from meanflow_xl in sizes and
#: guidance numbers only; their settings run on digits through configs/twins (tests/test_twins.py).
PAPER_PATHS = ("meanflow_xl.yaml", "meanflow_xl_improved.yaml", "splitmeanflow_xl.yaml")
