"""``tlearn --help`` and every subcommand's help read as plain text (no reStructuredText
or Markdown backticks) and the top-level help gives the exit codes."""

from __future__ import annotations

import argparse

import pytest

from tlearn.cli import build_parser, main


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_is_plain_text_everywhere(capsys):
    top = _help([], capsys)
    assert top.splitlines()[2].startswith("tlearn: transfer learning for image classification")
    assert "exit codes: 0 success" in " ".join(top.split())
    subparsers = next(a for a in build_parser()._actions
                      if isinstance(a, argparse._SubParsersAction))
    assert {"run", "predict", "promote", "prepare"} <= set(subparsers.choices)
    for text in [top, *(_help([name], capsys) for name in subparsers.choices)]:
        assert "`" not in text, text
