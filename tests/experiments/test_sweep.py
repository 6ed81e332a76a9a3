"""Sweeps: W&B sweep files expanded and run offline (grid, random, resume, failures, summaries)."""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from experiments.commands import sweep as sweep_command
from experiments.config import ExperimentConfig
from experiments.sweeping import (
    RESULT_FILE,
    SWEEP_DIR,
    InProcessExecutor,
    Metric,
    RunFailed,
    RunRecord,
    SubprocessExecutor,
    SweepError,
    expand,
    load_sweep,
    plan,
    run_sweep,
    sort_records,
)

COMMAND = [
    "${env}",
    "${interpreter}",
    "-m",
    "experiments.cli",
    "train",
    "--config",
    "default",
    "trainer.max_steps=2",
    "${args_no_hyphens}",
]


def write_sweep(tmp_path: Path, parameters: dict, method: str = "grid", name: str = "demo", **extra) -> Path:
    body = {
        "program": "experiments/cli.py",
        "name": name,
        "method": method,
        "metric": {"name": "test/shape_error_mm", "goal": "minimize"},
        "parameters": parameters,
        "command": COMMAND,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@dataclass(frozen=True)
class FakeResult:
    test_metrics: dict[str, float]


class FakeTrain:
    """Stands in for experiments.train.train: the shape error is a function of the loss weights."""

    def __init__(self, fail_when=None) -> None:
        self.configs: list[ExperimentConfig] = []
        self.fail_when = fail_when

    def __call__(self, cfg: ExperimentConfig, resume: bool = False) -> FakeResult:
        assert resume, "sweep runs must continue an interrupted run"
        self.configs.append(cfg)
        if self.fail_when is not None:
            self.fail_when(cfg)
        loss = cfg.loss
        error = 5.0 - loss.photometric - 1000 * loss.landmark - 2 * loss.perceptual
        return FakeResult(
            {"test/shape_error_mm": error, "test/mean_face_error_mm": 5.0, "test/landmark_error_px": 3.0 + error}
        )


def quiet(_: str) -> None:
    pass


TABLE1 = {
    "loss.photometric": {"values": [0.0, 1.92]},
    "loss.landmark": {"values": [0.0, 1.6e-3]},
    "loss.perceptual": {"values": [0.0, 0.2]},
}


# ------------------------------------------------------------------------------------------ expansion


def test_grid_is_the_cartesian_product_of_values_with_fixed_values_in_every_run(tmp_path):
    sweep = load_sweep(
        write_sweep(
            tmp_path,
            {
                "loss.photometric": {"values": [1.0, 2.0]},
                "renderer.image_size": {"values": [64, 96, 128]},
                "trainer.max_epochs": {"value": 1},
            },
        )
    )
    combos = expand(sweep)
    assert len(combos) == 6
    assert {(c["loss.photometric"], c["renderer.image_size"]) for c in combos} == {
        (p, s) for p in (1.0, 2.0) for s in (64, 96, 128)
    }
    assert all(c["trainer.max_epochs"] == 1 for c in combos)
    assert expand(sweep, count=4) == combos[:4]

    runs = plan(sweep)
    assert runs[0].config_files == ("default",)
    # The command's fixed tokens, then the parameters exactly as W&B's agent writes them.
    assert runs[0].overrides == (
        "trainer.max_steps=2",
        "loss.photometric=1.0",
        "renderer.image_size=64",
        "trainer.max_epochs=1",
    )
    assert len({r.run_id for r in runs}) == 6 and all(r.run_id.startswith("demo-") for r in runs)


def test_random_draws_are_seeded_within_bounds_and_follow_their_distributions(tmp_path):
    sweep = load_sweep(
        write_sweep(
            tmp_path,
            method="random",
            parameters={
                "a_uniform": {"min": 0.5, "max": 2.0},
                "b_int": {"min": 1, "max": 4},
                "c_logv": {"distribution": "log_uniform_values", "min": 1.0e-4, "max": 1.0e-2},
                "d_log": {"distribution": "log_uniform", "min": -2, "max": 0},
                "e_q": {"distribution": "q_uniform", "min": 0, "max": 100, "q": 10},
                "f_qf": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
                "g_inv": {"distribution": "inv_log_uniform_values", "min": 0.1, "max": 10.0},
                "h_normal": {"distribution": "normal", "mu": 3.0, "sigma": 0.5},
                "i_cat": {"values": ["x", "y", "z"]},
                "j_fixed": {"value": 7},
                "k_lognormal": {"distribution": "log_normal", "mu": 0.0, "sigma": 0.3},
            },
        )
    )
    draws = expand(sweep, count=400, seed=3)
    assert draws == expand(sweep, count=400, seed=3)
    assert draws != expand(sweep, count=400, seed=4)
    assert expand(sweep, count=10, seed=3) == draws[:10], "a larger count extends the same draws"
    col = {k: [d[k] for d in draws] for k in draws[0]}
    assert all(0.5 <= v <= 2.0 for v in col["a_uniform"])
    assert set(col["b_int"]) == {1, 2, 3, 4} and all(isinstance(v, int) for v in col["b_int"])
    assert all(1e-4 <= v <= 1e-2 for v in col["c_logv"])
    # Log-uniform: about half the draws below the geometric mean of the bounds.
    assert 0.4 < sum(v < 1e-3 for v in col["c_logv"]) / 400 < 0.6
    assert all(math.exp(-2) <= v <= 1.0 for v in col["d_log"])
    assert all(isinstance(v, int) and v % 10 == 0 and 0 <= v <= 100 for v in col["e_q"])
    assert set(col["f_qf"]) <= {0.0, 0.25, 0.5, 0.75, 1.0} and all(isinstance(v, float) for v in col["f_qf"])
    assert all(0.1 <= v <= 10.0 for v in col["g_inv"])
    mean = sum(col["h_normal"]) / 400
    assert abs(mean - 3.0) < 0.1
    assert set(col["i_cat"]) == {"x", "y", "z"}
    assert set(col["j_fixed"]) == {7}
    assert all(v > 0 for v in col["k_lognormal"])


def test_random_categorical_probabilities_and_run_cap_default(tmp_path):
    sweep = load_sweep(
        write_sweep(
            tmp_path,
            method="random",
            run_cap=30,
            parameters={
                "loss.perceptual": {"values": [0.1, 0.2, 0.3], "probabilities": [0.0, 1.0, 1.0]},
                "optim.lr": {"distribution": "uniform", "min": 1.0e-4, "max": 1.0e-3},
            },
        )
    )
    draws = expand(sweep)
    assert len(draws) == 30 and {d["loss.perceptual"] for d in draws} == {0.2, 0.3}


def test_all_zero_loss_combination_is_skipped_not_trained(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, TABLE1))
    fake = FakeTrain()
    records = run_sweep(sweep, tmp_path / "out", executor=InProcessExecutor(fake), log=quiet)
    assert len(records) == 8 and len(fake.configs) == 7
    skipped = [r for r in records if r.status == "skipped"]
    assert len(skipped) == 1 and records[-1] is skipped[0]
    assert skipped[0].params == {"loss.photometric": 0.0, "loss.landmark": 0.0, "loss.perceptual": 0.0}
    assert "no image loss" in skipped[0].error


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": "bayes"}, "method: grid"),
        ({"method": "hyperband"}, "method must be one of"),
        ({"parameters": {"x": {"distribution": "beta", "a": 1, "b": 1}}}, "'beta' is not supported"),
        ({"parameters": {"x": {"distribution": "log_uniform_values", "min": "1e-4", "max": 1.0}}}, "1.0e-4"),
        ({"parameters": {"x": {"min": 2.0, "max": 1.0}}}, "larger than max"),
        ({"parameters": {"x": {"distribution": "log_uniform_values", "min": 0.0, "max": 1.0}}}, "min > 0"),
        ({"parameters": {"loss": {"parameters": {"photometric": {"values": [1]}}}}}, "loss.photometric"),
        ({"parameters": {"x": {"values": []}}}, "non-empty list"),
        ({"command": None}, "args_no_hyphens"),
        ({"command": ["${env}", "${interpreter}", "-m", "experiments.cli", "train", "${args}"]}, "args_no_hyphens"),
        ({"command": ["${env}", "${interpreter}", "train.py", "${args_no_hyphens}"]}, "train"),
        ({"command": [*COMMAND[:-1], "--fast-dev-run", "${args_no_hyphens}"]}, "train fully"),
        ({"metric": {"name": "test/shape_error_mm", "goal": "lowest"}}, "minimize"),
    ],
)
def test_unusable_sweep_files_fail_with_the_fix(tmp_path, change, message):
    body = {"parameters": {"loss.photometric": {"values": [1.0]}}, **change}
    with pytest.raises(SweepError, match=message):
        load_sweep(write_sweep(tmp_path, **body))


def test_grid_over_a_distribution_and_random_without_count_fail(tmp_path):
    grid = load_sweep(write_sweep(tmp_path, {"optim.lr": {"min": 1.0e-4, "max": 1.0e-3}}))
    with pytest.raises(SweepError, match="method: random"):
        expand(grid)
    rand = load_sweep(write_sweep(tmp_path, {"optim.lr": {"min": 1.0e-4, "max": 1.0e-3}}, method="random"))
    with pytest.raises(SweepError, match="--count"):
        expand(rand)


# ------------------------------------------------------------------------------------------ the repository's files


@pytest.mark.parametrize("path", sorted(SWEEP_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_repository_sweeps_parse_expand_and_fit_the_config_schema(path):
    sweep = load_sweep(path)
    runs = plan(sweep, count=5 if sweep.method == "random" else None)
    assert runs
    for run in runs:
        # load_config succeeded on every run's overrides: every parameter is a schema key with a readable value.
        assert run.config_error is None, run.config_error
    assert sweep.metric.name.startswith("test/")
    # Online, the agent's runs must report to W&B; the schema's default mode is offline.
    assert "logging.wandb_mode=online" in sweep.command_overrides
    raw = yaml.safe_load(path.read_text())
    assert raw["command"][-1] == "${args_no_hyphens}" and raw["program"] == "experiments/cli.py"


def test_table1_sweeps_cover_the_paper_grid():
    for name in ("table1_losses", "table1_cpu"):
        runs = plan(load_sweep(name))
        assert len(runs) == 8 and sum(r.skip_reason is not None for r in runs) == 1
        assert {
            (r.params["loss.photometric"], r.params["loss.landmark"], r.params["loss.perceptual"]) for r in runs
        } == {(p, lm, pc) for p in (0.0, 1.92) for lm in (0.0, 1.6e-3) for pc in (0.0, 0.2)}


# ------------------------------------------------------------------------------------------ running


def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    def fail_when(cfg):
        if cfg.loss.photometric == 1.0:
            raise RuntimeError("renderer exploded")

    sweep = load_sweep(
        write_sweep(
            tmp_path,
            {
                # NaN weights give a NaN metric, which counts as a failure.
                "loss.photometric": {"values": [1.0, 2.0, 3.0, float("nan")]},
            },
        )
    )
    fake = FakeTrain(fail_when)
    records = run_sweep(sweep, tmp_path / "out", executor=InProcessExecutor(fake), log=quiet)
    by_value = {"nan" if math.isnan(r.params["loss.photometric"]) else r.params["loss.photometric"]: r for r in records}
    assert by_value[1.0].status == "failed" and "RuntimeError: renderer exploded" in by_value[1.0].error
    assert by_value["nan"].status == "failed" and "is nan" in by_value["nan"].error
    assert by_value[2.0].status == by_value[3.0].status == "ok"
    assert [r.status for r in records] == ["ok", "ok", "failed", "failed"]

    # An unknown key fails the run at load_config, before any training.
    bad = load_sweep(write_sweep(tmp_path, {"loss.photometrik": {"values": [1.0]}}, name="bad"))
    fake = FakeTrain()
    (record,) = run_sweep(bad, tmp_path / "bad", executor=InProcessExecutor(fake), log=quiet)
    assert record.status == "failed" and "did you mean 'loss.photometric'" in record.error and not fake.configs


def test_runs_sort_by_the_metric_goal_failed_then_skipped_last():
    records = [
        RunRecord("a", {}, "ok", metric=2.0),
        RunRecord("b", {}, "failed", error="x"),
        RunRecord("c", {}, "skipped"),
        RunRecord("d", {}, "ok", metric=1.0),
        RunRecord("e", {}, "ok", metric=3.0),
    ]
    assert [r.run_id for r in sort_records(Metric("m", "minimize"), records)] == ["d", "a", "e", "b", "c"]
    assert [r.run_id for r in sort_records(Metric("m", "maximize"), records)] == ["e", "a", "d", "b", "c"]


def test_summary_files_rank_the_runs(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, TABLE1))
    out = tmp_path / "out"
    run_sweep(sweep, out, executor=InProcessExecutor(FakeTrain()), log=quiet)
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 9)]
    errors = [float(r["test/shape_error_mm"]) for r in rows if r["status"] == "ok"]
    assert errors == sorted(errors) and len(errors) == 7
    best = rows[0]
    assert (best["loss.photometric"], best["loss.landmark"], best["loss.perceptual"]) == ("1.92", "0.0016", "0.2")
    assert best["test/landmark_error_px"] and best["test/mean_face_error_mm"] == "5.0"
    assert rows[-1]["status"] == "skipped"
    md = (out / "summary.md").read_text()
    assert "| 1 | " in md and "test/shape_error_mm" in md and "loss.perceptual" in md
    assert "trainer.max_steps=2" in md, "the fixed settings are listed above the table"
    result = out / best["run_id"] / RESULT_FILE
    assert result.is_file()


def test_rerunning_skips_completed_runs_and_retries_failed_ones(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"loss.photometric": {"values": [1.0, 2.0, 3.0]}}))
    out = tmp_path / "out"

    def flaky(cfg):
        if cfg.loss.photometric == 3.0:
            raise MemoryError("out of memory")

    first = run_sweep(sweep, out, executor=InProcessExecutor(FakeTrain(flaky)), log=quiet)
    assert [r.status for r in first] == ["ok", "ok", "failed"]
    again = FakeTrain()
    second = run_sweep(sweep, out, executor=InProcessExecutor(again), log=quiet)
    assert [cfg.loss.photometric for cfg in again.configs] == [3.0]
    assert [r.status for r in second] == ["ok", "ok", "ok"]
    assert [r.metric for r in second] == sorted(r.metric for r in second)
    # Each run wrote into its own directory under the sweep, named by its id.
    assert again.configs[0].logging.output_dir == str(out.resolve())
    assert again.configs[0].logging.run_name == second[0].run_id
    assert again.configs[0].logging.wandb_mode == "offline"


def test_a_killed_sweep_writes_its_summary_and_the_rerun_retries_the_interrupted_run(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"loss.photometric": {"values": [1.0, 2.0, 3.0]}}))
    out = tmp_path / "out"

    def killed_during_the_second_run(cfg):
        if cfg.loss.photometric == 2.0:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, executor=InProcessExecutor(FakeTrain(killed_during_the_second_run)), log=quiet)
    with open(out / "summary.csv") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["ok"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the sweep restores the signal's handler"
    again = FakeTrain()
    run_sweep(sweep, out, executor=InProcessExecutor(again), log=quiet)
    assert [cfg.loss.photometric for cfg in again.configs] == [2.0, 3.0]


# Slow: the child process imports torch and Lightning (about 6 s); test_failed_runs_are_recorded_and_the_sweep_goes_on
# covers the recording in-process.
@pytest.mark.slow
def test_the_child_process_reports_a_bad_config_as_a_failed_run(tmp_path):
    with pytest.raises(RunFailed, match="unknown config key 'loss.photometrik'"):
        SubprocessExecutor(group="demo")(["default"], ["loss.photometrik=1"], tmp_path / "run")
    assert (tmp_path / "run" / "train.log").is_file()


def test_command_dry_run_lists_the_runs_without_training(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sweep_command.register(parser.add_subparsers(dest="command"))
    path = write_sweep(tmp_path, TABLE1)
    args = parser.parse_args(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "8 runs" in out and out.count("[to run]") == 7 and "skip: no image loss" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_real_tiny_sweep_trains_in_child_processes_as_wandb_offline_runs(tmp_path):
    # The smoke config's tiny run, with W&B on (asked online: the runner must still make it offline).
    default = COMMAND.index("default") + 1
    command = [
        *COMMAND[:default],
        "--config",
        "smoke",
        *COMMAND[default:-1],
        "logging.wandb=true",
        "logging.wandb_mode=online",
        COMMAND[-1],
    ]
    path = write_sweep(tmp_path, {"loss.perceptual": {"values": [0.0, 0.2]}}, name="tiny", command=command)
    records = run_sweep(load_sweep(path), tmp_path / "out", log=quiet)
    assert [r.status for r in records] == ["ok", "ok"], [r.error for r in records]
    for r in records:
        assert math.isfinite(r.metric) and "test/mean_face_error_mm" in r.test_metrics
        assert list((Path(r.run_dir) / "wandb").glob("offline-run-*")), "each run is a W&B offline run"
