"""What the command-line tests share: running ``pyrovae`` in-process and reading its output."""

from __future__ import annotations

from typing import Any

from pyrovae import cli


def run_cli(argv: list[Any], capsys: Any) -> tuple[int, str, str]:
    """``pyrovae ARGV`` in this process: its exit status (argparse's usage errors included),
    stdout and stderr."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
