"""``face3d``: user errors are one line with exit status 2, everything else keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from errors import ExistingOutputError, InvalidInputError, MissingFileError, UserError
from experiments import cli
from experiments.commands import preview

REPO = Path(__file__).resolve().parents[2]


def _command_raising(monkeypatch, error: BaseException) -> None:
    """Make ``face3d preview`` raise ``error`` (register binds ``run`` when the parser is built)."""

    def run(args):
        raise error

    monkeypatch.setattr(preview, "run", run)


@pytest.mark.parametrize(
    "error", [UserError("bad"), InvalidInputError("bad"), MissingFileError("bad"), ExistingOutputError("bad")]
)
def test_a_user_error_is_one_line_and_exit_status_2(monkeypatch, capsys, error):
    _command_raising(monkeypatch, error)
    assert cli.main(["preview"]) == 2
    err = capsys.readouterr().err
    assert err == "face3d preview: error: bad\n"


def test_user_errors_keep_the_builtin_types_callers_catch():
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError)
    assert issubclass(ExistingOutputError, FileExistsError)
    from experiments.config import ConfigError

    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("error", [ValueError("a bug"), FileNotFoundError("a bug"), KeyError("a bug")])
def test_any_other_exception_is_not_turned_into_a_user_error_line(monkeypatch, capsys, error):
    _command_raising(monkeypatch, error)
    with pytest.raises(type(error)):
        cli.main(["preview"])
    assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--debug", "preview"], ["preview", "--debug"]])
def test_debug_prints_the_traceback_of_a_user_error(monkeypatch, capsys, argv):
    _command_raising(monkeypatch, InvalidInputError("bad value"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "InvalidInputError: bad value" in err
    assert err.rstrip().endswith("face3d preview: error: bad value")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config", "no_such_config"], "config 'no_such_config' not found"),
        (["loss.photometrik=1"], "loss.photometric"),
    ],
)
def test_config_mistakes_are_one_line(capsys, args, expected):
    assert cli.main(["train", "--print-config", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("face3d train: error: ") and expected in lines[0]


# Slow: each process imports torch and Lightning (about 6 s); test_config_mistakes_are_one_line checks the same
# messages in-process.
@pytest.mark.slow
def test_config_mistakes_from_the_real_command_line_are_one_line():
    # A real process: what a user sees for a typo'd config name and a wrong override, and the exit status.
    for args in (["--config", "no_such_config"], ["loss.photometrik=1"]):
        done = subprocess.run(
            [sys.executable, "-m", "experiments.cli", "train", "--print-config", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("face3d train: error: "), done.stderr
    assert "loss.photometric" in lines[0]


def test_a_programming_error_keeps_its_traceback_in_a_real_process(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "import sys\n"
        "from experiments import cli\n"
        "from experiments.commands import preview\n"
        "def run(args):\n"
        "    raise ValueError('a bug, not a user mistake')\n"
        "preview.run = run\n"
        "sys.exit(cli.main(['preview']))\n"
    )
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ValueError: a bug" in done.stderr
