"""The ``interp`` command dispatches to the modules' mains and explains bad input."""

from __future__ import annotations

import pytest

from interp import cli


def test_usage_lists_every_subcommand(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


def test_unknown_subcommand_suggests(capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'trian'" in err and "train" in err


def test_subcommand_help_reaches_the_module(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--help"])
    assert e.value.code == 0
    assert "python -m interp.zoo.evaluate" in capsys.readouterr().out
