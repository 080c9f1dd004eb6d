"""The command line entry point."""

import json
import subprocess
import sys

import pytest

from cir_demo.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "cir_demo", "info", "RN50x4-quickgelu"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model_config"]["embed_dim"] == 640 and info["model_config"]["quick_gelu"] is True


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
