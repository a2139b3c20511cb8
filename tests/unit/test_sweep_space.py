"""Search spaces (cifar_lit.tuning.space) and the sweep's settings: a bad one is one line naming
the field, before any server starts or any training."""

from __future__ import annotations

import json

import optuna
import pytest

from cifar_lit.config import TrainConfig
from cifar_lit.recipes.plan import resolve
from cifar_lit.tuning.space import SpaceError, build_space, default_space, read_space
from cifar_lit.tuning.study import SweepConfig
from cifar_lit.tuning.trial import TrialRef
from flows.sweep_flow import main

BASE = resolve(TrainConfig(recipe="seed", val_size=40))


def test_a_space_suggests_each_kind_of_range_within_its_bounds():
    space = build_space({"lr": {"low": 1e-3, "high": 1e-1, "log": True}, "batch_size": [16, 32],
                         "image_size": {"low": 24, "high": 40, "step": 8}, "label_smoothing": {"low": 0, "high": 0.3}},
                        BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = space.suggest(study.ask())
        assert 1e-3 <= values["lr"] <= 1e-1 and values["batch_size"] in (16, 32)
        assert values["image_size"] in (24, 32, 40) and isinstance(values["image_size"], int)
        assert 0 <= values["label_smoothing"] <= 0.3
        TrainConfig(**{**BASE.model_dump(), **values})  # every suggestion is a valid config


@pytest.mark.parametrize(("spec", "message"), [
    ({"lrr": [0.1]}, "space: lrr: not a config field"),
    ({"seed": [1, 2]}, "space: seed: fixed for a study"),
    ({"val_size": [10, 20]}, "space: val_size: fixed for a study"),
    ({"output_dir": ["a"]}, "space: output_dir: fixed for a study"),
    ({"lr": {"low": 0, "high": 1, "log": True}}, "space: lr: a log range needs low > 0"),
    ({"lr": {"low": 1, "high": 0.1}}, "space: lr: low 1 is above high 0.1"),
    ({"lr": {"low": -1, "high": 0.1}}, "space: lr: -1: Input should be greater than 0"),
    ({"lr": {"low": 0.1}}, "space: lr: low and high must be finite numbers"),
    ({"lr": {"low": 0.1, "high": 1, "scale": 2}}, "space: lr: unknown key 'scale'"),
    ({"optimizer": ["adam", "rmsprop"]}, "space: optimizer: 'rmsprop': Input should be"),
    ({"batch_size": []}, "space: batch_size: an empty list of choices"),
    ({"lr": "0.1"}, "space: lr: expected a list of choices or {low, high}"),
])
def test_a_bad_space_is_one_line_naming_the_field(spec, message):
    with pytest.raises(SpaceError) as e:
        build_space(spec, BASE)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_space_files_are_yaml_or_json_and_a_broken_one_is_named(tmp_path):
    (tmp_path / "s.yaml").write_text("lr: {low: 0.01, high: 0.1, log: true}\nbatch_size: [16, 32]\n")
    (tmp_path / "s.json").write_text(json.dumps({"lr": [0.01]}))
    assert read_space(tmp_path / "s.yaml") == {"lr": {"low": 0.01, "high": 0.1, "log": True}, "batch_size": [16, 32]}
    assert read_space(tmp_path / "s.json") == {"lr": [0.01]}
    (tmp_path / "bad.yaml").write_text("lr: [0.1\n")
    for path, words in ((tmp_path / "bad.yaml", "not valid YAML"), (tmp_path / "missing.json", "No such file"),
                        (tmp_path / "s.txt", "not valid JSON")):
        if path.suffix == ".txt":
            path.write_text("lr: 1")
        with pytest.raises(SpaceError, match=f"^space: {path}: {words}"):
            read_space(path)


def test_the_default_space_is_around_the_recipes_values():
    fast = resolve(TrainConfig(recipe="cpu-fast", val_size=5000))
    dims = {d.name: d for d in default_space(fast).dimensions}
    assert dims["lr"].low == pytest.approx(fast.lr / 3) and dims["lr"].high == pytest.approx(fast.lr * 3)
    assert dims["lr"].log and dims["weight_decay"].low == pytest.approx(fast.weight_decay / 4)
    assert "weight_decay" not in {d.name for d in default_space(BASE).dimensions}  # the tutorial uses none


def test_a_bad_sweep_is_refused_in_one_line_before_a_flow_runs(tmp_path, capsys):
    (tmp_path / "space.json").write_text(json.dumps({"seed": [1, 2]}))
    cases = [
        (["--space", str(tmp_path / "space.json"), "--recipe", "seed"], "--space: seed: fixed for a study"),
        (["--space", str(tmp_path / "nothing.json")], "--space: "),
        (["--val-size", "0"], "--val-size: a sweep compares its trials on validation images"),
        (["--concurrency", "2"], "--concurrency: trials in this process run one at a time"),
        (["--trials", "0"], "--trials: Input should be greater than or equal to 1"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main([*argv, "--runs-dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"sweep_flow.py: error: {message}"), err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_storage_password_is_never_recorded():
    url = "postgresql://me:s3cret@db.example/optuna"
    for model in (SweepConfig(storage=url), TrialRef(storage=url, study="s", number=0)):
        assert "s3cret" not in model.model_dump_json() and "me@db.example" in model.model_dump_json()
        assert model.storage == url  # kept in memory, where the study is opened
