"""TrainConfig validation, recipes, and the CLI built from it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cifar_lit.cli import build_parser, flag, parse_config
from cifar_lit.config import FLAG_GROUPS, TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_epochs": 0}, "max_epochs"),
        ({"val_size": -1}, "val_size"),
        ({"test_size": 0}, "test_size"),
        ({"val_size": 1.5}, "val_size"),
        ({"val_size": 50000}, "val_size"),
        ({"model": "nope"}, "model"),
        ({"dataset": "mnist"}, "dataset"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"devices": 0}, "devices"),
        ({"download_md5": "xyz"}, "download_md5"),
        ({"max_time": "1h"}, "max_time"),
        ({"precision": "8-bit"}, "precision"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValidationError) as e:
        TrainConfig(**kwargs)
    assert field in str(e.value)


def test_config_round_trips_through_json():
    c = TrainConfig(recipe="seed", val_size=0.2, devices="0,1")
    assert TrainConfig(**c.as_dict()) == c


def test_run_name_and_output_dir():
    c = TrainConfig(recipe="seed")
    assert c.output_dir is None
    resolved = c.with_output_dir("cifar10-x")
    assert resolved.out == Path("runs/cifar10-x")
    assert c.run_name().startswith("cifar10-seed_cnn-")
    # Two runs started in the same second never share a default output dir.
    from datetime import datetime

    when = datetime(2026, 11, 28, 12, 0, 0)
    names = {c.run_name(when) for _ in range(20)}
    assert len(names) == 20 and all(n.startswith("cifar10-seed_cnn-20261128-120000-") for n in names)
    assert c.model_copy(update={"runs_dir": Path("/mnt/runs")}).with_output_dir("x").out == Path("/mnt/runs/x")
    with pytest.raises(ValueError, match="output_dir"):
        _ = c.out


def test_cli_maps_every_field_to_a_flag():
    c = parse_config(["--max-epochs", "3", "--lr", "0.001", "--val-size", "0.2", "--wandb-mode", "disabled"])
    assert (c.max_epochs, c.lr, c.val_size, c.wandb_mode) == (3, 0.001, 0.2, "disabled")
    flags = {a.option_strings[0] for a in build_parser()._actions if a.option_strings}
    assert {"--" + name.replace("_", "-") for name in TrainConfig.model_fields} <= flags


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-epochs", "0"], "--max-epochs: Input should be greater than or equal to 1"),
        (["--max-epochs", "two"], "--max-epochs: Input should be a valid integer"),
        (["--val-size", "60000"], "--val-size: 60000 must be smaller than the 50000 training images"),
        (["--model", "resnet999"], "--model: unknown model 'resnet999'"),
        (["--dataset", "imagefolder", "--data-dir", "/nope"], "--data-dir: /nope has no train/ folder"),
        (["--wandb-mode", "loud"], "--wandb-mode: Input should be"),
        (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
        # inf/NaN would train NaNs and export them; a seed must fit numpy's and torch's generators.
        (["--lr", "inf"], "--lr: Input should be a finite number"),
        (["--weight-decay", "nan"], "--weight-decay: Input should be a finite number"),
        (["--muon-lr", "inf"], "--muon-lr: Input should be a finite number"),
        (["--promote-margin", "nan"], "--promote-margin: Input should be a finite number"),
        (["--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
        (["--seed", str(2**32)], "--seed: Input should be less than or equal to 4294967295"),
        (["--force", "yes"], "unrecognized arguments: yes"),
        (["--promote-margin", "-0.1"], "--promote-margin: Input should be greater than or equal to 0"),
        (["--deterministic", "--time-budget", "1m"], "--deterministic: --time-budget ends the fit by the clock"),
        (["--deterministic", "--max-time", "00:00:10:00"], "--deterministic: --max-time ends the fit by the clock"),
    ],
)
def test_bad_flag_exits_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(argv, prog="train_flow.py")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


# Runs a flow script as `python flows/<name>.py ARGS` would, with the heavy packages made
# unimportable: --help and flag errors must answer without them.
WITHOUT_HEAVY_IMPORTS = """
import runpy, sys
HEAVY = {"torch", "torchvision", "lightning", "prefect", "wandb", "pandas", "numpy"}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} was imported")
sys.meta_path.insert(0, Refuse())
script, *args = sys.argv[1:]
sys.argv = [script.rsplit("/", 1)[-1], *args]
runpy.run_path(script, run_name="__main__")
"""


def _light(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", WITHOUT_HEAVY_IMPORTS, script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _flag_help(text: str, flag_: str) -> str:
    """The help of one flag: from its line to the next flag or group."""
    block = text.split(f"\n  {flag_}", 1)[1]
    return re.split(r"\n  --|\n\n", block, maxsplit=1)[0]


def test_help_groups_hold_every_field_once():
    grouped = [name for names in FLAG_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(TrainConfig.model_fields)


def test_script_help_answers_without_torch_prefect_or_wandb():
    help_ = _light("flows/train_flow.py", "--help")
    assert help_.returncode == 0, help_.stderr
    text = help_.stdout
    # Grouped, in this order, then the examples.
    titles = [f"\n{title}:\n" for title in ("data", "model", "optimisation", "hardware", "tracking", "output and registry")]
    positions = [text.index(t) for t in titles]
    assert positions == sorted(positions) and text.index("\nexamples:\n") > positions[-1]
    assert text.count("python flows/train_flow.py") >= 3
    for name in TrainConfig.model_fields:  # every field, each default said at most once
        assert _flag_help(text, flag(name)).count("(default") <= 1, name
    assert "(default: data)" in _flag_help(text, "--data-dir")
    # The registry's models:
    assert "{airnet94,airnet_m,airnet_s,mobilenet_v3_small,resnet18,seed_cnn}" in _flag_help(text, "--model")
    assert "{auto,seed,cpu-fast,cpu-long,gpu-fast,transfer}" in _flag_help(text, "--recipe")
    assert "--compile, --no-compile" in text and "--force, --no-force" in text  # booleans are switches
    predict = _light("flows/predict_flow.py", "--help")
    assert predict.returncode == 0 and "--registry-dir" in predict.stdout, predict.stderr


def test_valid_flags_validate_without_torch_on_a_machine_without_gpu_driver():
    from cifar_lit.recipes.presets import gpu_driver_loaded

    if gpu_driver_loaded():
        pytest.skip("this machine has a GPU driver: choosing the auto recipe asks torch")
    code = WITHOUT_HEAVY_IMPORTS.split("script, *args")[0] + (
        "from cifar_lit.cli import parse_config\n"
        "from cifar_lit.recipes.plan import resolve\n"
        "c = resolve(parse_config(['--max-epochs', '3']))\n"
        "print(c.recipe, c.max_epochs, c.precision)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["cpu-fast", "3"]


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--batch-size", "0"], "train_flow.py: error: --batch-size: Input should be greater than or equal to 1"),
        (["--model", "nope"], "train_flow.py: error: --model: unknown model 'nope'; known: airnet94, airnet_m, "
                              "airnet_s, mobilenet_v3_small, resnet18, seed_cnn"),
        (["--no-such-flag"], "train_flow.py: error: unrecognized arguments: --no-such-flag"),
    ],
)
def test_script_flag_errors_answer_without_heavy_imports(argv, line):
    bad = _light("flows/train_flow.py", *argv)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [line]




def test_a_weights_file_counts_by_its_content_not_its_path(tmp_path):
    """The skip-if-unchanged check and resume compare ``effective()``: new weights saved over the
    old file must retrain; the same weights copied elsewhere must not."""
    import os

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights one")
    config = TrainConfig(recipe="transfer", weights_file=a)
    before = config.effective()
    assert before == TrainConfig(recipe="transfer", weights_file=b).effective()
    assert before["weights_file"].startswith("sha256:")
    a.write_bytes(b"weights two")
    os.utime(a, ns=(1, 1))  # a new modification time, as a save gives
    assert config.effective() != before
