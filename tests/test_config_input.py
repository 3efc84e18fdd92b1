"""Hostile and malformed config input (issue 19): every bad file or ``--set`` is refused before any
work with one line naming the file (or the ``--set``), the key and what was expected, and exit 2."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap

import pytest

from tests_paths import CONFIGS, REPO
from toolkit.checkpoint import chosen_average
from toolkit.cli import main
from toolkit.config import MAX_ALIAS_NODES, MAX_YAML_DEPTH, load_config, parse_yaml
from toolkit.errors import QUOTE_LIMIT, ConfigError, UsageError, quoted

BASE = """\
data: {name: moons}
model: {name: mlp}
objective: {name: flow_matching}
sampler: {name: euler}
"""


def write(tmp_path, content: str | bytes, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else textwrap.dedent(content).encode())
    return path


def error_of(tmp_path, content: str | bytes, overrides=()) -> str:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides)
    return str(error.value).replace(str(path), "run.yaml")


# -- 4: alias bombs, and values too long to quote ------------------------------------------------

# nine lines, 600 bytes, a billion strings: each list holds ten of the one before
BOMB_FILE = "- &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"- &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
BOMB_VALUE = "[&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
    f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)) + "]"

# `toolkit` commands in a child process whose memory is capped at 2 GiB: the old code expanded a bomb
# into an error message until memory ran out, which must fail this test (a MemoryError, or the
# timeout), not the machine. Prints [exit code, stderr] of each command as JSON.
CHILD = """
import contextlib, io, json, sys
from toolkit.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        results.append([main(argv), err.getvalue()])
print(json.dumps(results))
"""


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))


def toolkit_in_child(*commands: list[str]) -> list[tuple[int, str]]:
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(commands)], capture_output=True, text=True,
                           timeout=60, preexec_fn=_cap_memory, cwd=REPO)
    assert child.returncode == 0, child.stderr[-2000:]
    return [tuple(result) for result in json.loads(child.stdout)]


def test_alias_bomb_in_a_file_or_a_set_is_refused_before_it_expands(tmp_path):
    assert len(BOMB_FILE) < 1024 and len(BOMB_VALUE) < 1024
    bomb = write(tmp_path, BOMB_FILE, "bomb.yaml")
    base = write(tmp_path, BASE)
    results = toolkit_in_child(["config", "show", str(bomb)],
                               ["config", "show", str(base), "--set", f"run.steps={BOMB_VALUE}"])
    for (code, err), source in zip(results, [str(bomb), "--set run.steps=[&a0 [lol"]):
        assert code == 2, err[-2000:]
        assert err.count("\n") == 1 and err.startswith(f"toolkit: error: {source}")
        assert f"not valid YAML: its aliases expand it by 1,234,567,880 nodes, more than the {MAX_ALIAS_NODES:,} " \
               f"allowed\n" in err


def test_aliases_that_reuse_a_section_still_load():
    text = "base: &base {lr: 0.001, betas: [0.9, 0.99]}\nfirst: *base\nsecond: {<<: *base, lr: 0.002}\n"
    assert parse_yaml(text, "t.yaml") == {"base": {"lr": 0.001, "betas": [0.9, 0.99]},
                                          "first": {"lr": 0.001, "betas": [0.9, 0.99]},
                                          "second": {"lr": 0.002, "betas": [0.9, 0.99]}}


def test_a_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match=r"^t.yaml: not valid YAML: line 1, column 8: an alias contains itself"):
        parse_yaml("steps: &a [*a]\n", "t.yaml")


def test_an_error_quotes_a_long_value_shortened(tmp_path):
    huge = "x" * 100_000
    message = error_of(tmp_path, BASE + f"run: {{steps: {huge}}}\n")
    assert message.startswith("run.yaml: run.steps: got 'xxx") and "..." in message
    assert len(message) < 3 * QUOTE_LIMIT  # the --set and the value, each shortened
    nested = [[list(range(1000))] * 1000] * 1000  # a billion numbers, shared
    assert len(quoted(nested)) <= QUOTE_LIMIT and quoted(nested).endswith("...")
    assert quoted((0.9, 1.5)) == "(0.9, 1.5)" and quoted("a\nb") == "'a\\nb'"


# -- 11: unreadable files and YAML errors: one line, exit 2 ---------------------------------------


def test_a_file_that_is_not_utf8_text(tmp_path):
    assert error_of(tmp_path, b"run: {name: caf\xe9}\n") == (
        "run.yaml: not UTF-8 text (byte 0xe9 at offset 15); expected a YAML config file")


def test_a_binary_file(tmp_path):
    assert error_of(tmp_path, b"run:\n  name: a\x00b\n") == (
        "run.yaml: not valid YAML: line 2, column 10: character #x0000 is not allowed: special characters are "
        "not allowed")


def test_nesting_20000_levels_deep(tmp_path):
    assert error_of(tmp_path, "run: " + "[" * 20_000 + "]" * 20_000 + "\n") == (
        f"run.yaml: not valid YAML: line 1, column {5 + MAX_YAML_DEPTH}: nested more than {MAX_YAML_DEPTH} levels "
        f"deep")


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    assert error_of(tmp_path, BASE + "run:\n  steps: 3\n name: x\n") == (
        "run.yaml: not valid YAML: line 7, column 2: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 1, column 1)")
    assert error_of(tmp_path, "data: [unclosed\n") == (
        "run.yaml: not valid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>' (while parsing a "
        "flow sequence at line 1, column 7)")


def test_a_set_that_is_not_yaml(tmp_path):
    assert error_of(tmp_path, BASE, ["run.steps=["]) == (
        "--set run.steps=[: not valid YAML: line 1, column 2: expected the node content, but found '<stream end>' "
        "(while parsing a flow node at line 1, column 2)")


def test_values_python_cannot_hold(tmp_path):
    # a date in month 13 was a ValueError out of PyYAML (so is an integer of 5,000 digits from Python 3.11 on)
    assert error_of(tmp_path, BASE + "run: {steps: 2020-13-45}\n") == (
        "run.yaml: not valid YAML: line 5, column 14: cannot read this value: month must be in 1..12")
    message = error_of(tmp_path, BASE, [f"optimizer.lr={10**400}"])  # was an OverflowError
    assert message.startswith("--set optimizer.lr=1000") and ": optimizer.lr: got 1000" in message
    assert message.endswith("0 (int), expected a number") and message.count("...") == 2
    assert len(message) < 3 * QUOTE_LIMIT  # the --set and the value, each shortened


# -- 14: an error an override caused names the override --------------------------------------------


def test_an_error_in_a_section_a_set_created_names_the_set(tmp_path):
    assert error_of(tmp_path, BASE, ["foo.bar=1"]).startswith(
        "--set foo.bar=1: foo: unknown key")
    assert error_of(tmp_path, BASE, ["run..steps=3"]) == (
        "--set run..steps=3: run..steps: expected a dotted key of non-empty names, e.g. optimizer.lr")
    # the most specific setting is blamed: the second --set, not the first that made its section
    assert error_of(tmp_path, BASE, ["optimizer.lr=0.1", "optimizer.whatever=2"]).startswith(
        "--set optimizer.whatever=2: optimizer.whatever: unknown key")


# -- 17, 6b: numbers the frameworks would refuse later ---------------------------------------------


def test_seed_must_fit_the_frameworks(tmp_path):
    assert error_of(tmp_path, BASE, [f"run.seed={2**63}"]) == (
        f"--set run.seed={2**63}: run.seed: got {2**63}, expected a seed in [0, 2^63)")
    assert error_of(tmp_path, BASE, ["run.seed=-1"]) == (
        "--set run.seed=-1: run.seed: got -1, expected a seed in [0, 2^63)")
    assert load_config(write(tmp_path, BASE), [f"run.seed={2**63 - 1}"]).run.seed == 2**63 - 1


def test_learning_rate_is_finite_positive_and_sane(tmp_path):
    assert error_of(tmp_path, BASE, ["optimizer.lr=1e39"]) == (
        "--set optimizer.lr=1e39: optimizer.lr: got 1e+39, expected a value <= 10.0")
    assert load_config(write(tmp_path, BASE), ["optimizer.lr=10"]).optimizer.lr == 10.0
    for bad in (".nan", ".inf", "-.inf", "nan", "1e400"):  # every float option: one conversion refuses them
        assert error_of(tmp_path, BASE, [f"optimizer.eps={bad}"]).startswith(
            f"--set optimizer.eps={bad}: optimizer.eps: got")


# -- 7: eval is checked before step 0 ---------------------------------------------------------------


def test_eval_weights_are_checked_at_load(tmp_path):
    text = BASE + "ema: {decays: [0.99, 0.999]}\n"
    assert error_of(tmp_path, text + "eval: {weights: 0.5}\n") == (
        "run.yaml: eval.weights: got 0.5, expected ema, model, or one of ema.decays (0.99, 0.999)")
    assert error_of(tmp_path, text + "eval: {weights: emaa}\n") == (
        "run.yaml: eval.weights: got 'emaa', expected ema, model, or one of ema.decays (0.99, 0.999)")
    assert error_of(tmp_path, BASE, ["eval.weights=0.999"]) == (
        "--set eval.weights=0.999: eval.weights: got 0.999, expected ema or model (ema.decays is empty)")
    config = load_config(write(tmp_path, text + "eval: {weights: 0.999}\n"))
    # sampling from a checkpoint reads --weights the same way
    assert chosen_average(config, "0.999") == 0.999 and chosen_average(config, "ema") == 0.99
    for weights, shown in (("0.5", "0.5"), ("emaa", "'emaa'")):
        with pytest.raises(UsageError, match=rf"^no EMA weights with decay {shown} in the checkpoint; it has: "
                                             rf"model, 0.99, 0.999$"):
            chosen_average(config, weights)


def test_a_bad_eval_weights_stops_a_run_before_it_starts(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", str(CONFIGS / "fm_toy2d.yaml"), "--out", str(out), "--set", "run.steps=3",
                 "--set", "ema.decays=[0.99]", "--set", "eval.weights=0.5"])
    assert (code, capsys.readouterr().err) == (2, "toolkit: error: --set eval.weights=0.5: eval.weights: got 0.5, "
                                                  "expected ema, model, or one of ema.decays (0.99)\n")
    assert not out.exists()


# -- 19: duplicate keys -------------------------------------------------------------------------------


def test_a_duplicate_key_names_both_lines(tmp_path):
    assert error_of(tmp_path, BASE + "run:\n  steps: 3\n  seed: 1\n  steps: 4\n") == (
        "run.yaml: not valid YAML: line 8, column 3: duplicate key 'steps', at lines 6 and 8")
    assert error_of(tmp_path, BASE + "model: {name: unet}\n") == (
        "run.yaml: not valid YAML: line 5, column 1: duplicate key 'model', at lines 2 and 5")


# -- every hostile input: exit 2 and one line on stderr ---------------------------------------------

HOSTILE = {
    "not utf-8": (b"run: {name: caf\xe9}\n", []),
    "binary": (bytes(range(256)) * 4, []),
    "nul byte": (b"run:\n  name: a\x00b\n", []),
    "20000 levels": ("run: " + "[" * 20_000 + "]" * 20_000 + "\n", []),
    "syntax error": (BASE + "run:\n  steps: 3\n name: x\n", []),
    "two documents": (BASE + "---\n" + BASE, []),
    "python tag": (BASE + "run: !!python/object:os.system {}\n", []),
    "duplicate key": (BASE + "run: {steps: 3, steps: 4}\n", []),
    "recursive alias": (BASE + "run: {steps: &a [*a]}\n", []),
    "key with a line break": (BASE + '"run\\nname": 3\n', []),
    "a long string": (BASE + "run: {name: [" + "x" * 100_000 + "]}\n", []),
    "month 13": (BASE + "run: {steps: 2020-13-45}\n", []),
    "set not yaml": (BASE, ["run.steps=["]),
    "set unknown section": (BASE, ["foo.bar=1"]),
    "set empty key part": (BASE, ["run..steps=3"]),
    "set no value": (BASE, ["steps"]),
    "seed 2^63": (BASE, [f"run.seed={2**63}"]),
    "lr 1e39": (BASE, ["optimizer.lr=1e39"]),
    "lr beyond any float": (BASE, [f"optimizer.lr={10**400}"]),
    "lr nan": (BASE, ["optimizer.lr=.nan"]),
    "eval weights": (BASE + "ema: {decays: [0.99]}\n", ["eval.weights=0.5"]),
}


@pytest.mark.parametrize("content, overrides", HOSTILE.values(), ids=HOSTILE.keys())
def test_every_hostile_input_is_one_line_and_exit_2(tmp_path, capsys, content, overrides):
    path = write(tmp_path, content)
    code = main(["config", "show", str(path), *(arg for o in overrides for arg in ("--set", o))])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith("toolkit: error: ") and err.endswith("\n") and err.count("\n") == 1, err[:2000]
    assert len(err) < 1000
