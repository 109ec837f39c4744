"""The side entry points take exactly the options of their ``medclip`` subcommand (one definition each)."""

from __future__ import annotations

import argparse

import pytest

from medclip.cli import build_parser


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _options(parser: argparse.ArgumentParser) -> dict[tuple[str, ...], tuple]:
    """Every argument but -h: option strings (or the positional's dest) -> what it accepts."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        key = tuple(action.option_strings) or (action.dest,)
        default = None if action.default is argparse.SUPPRESS else action.default  # -q/-v on subcommands
        out[key] = (
            action.dest,
            type(action).__name__,
            action.nargs,
            action.required,
            action.choices,
            action.type,
            default if action.dest not in ("quiet", "verbose") else None,
        )
    return out


def _side_parsers() -> dict[str, argparse.ArgumentParser]:
    from medclip.demo.cli import build_demo_parser
    from medclip.eval.cli import build_eval_parser
    from medclip.knowledge.__main__ import build_label_parser
    from medclip.train.__main__ import build_train_parser

    return {
        "eval": build_eval_parser(),
        "fit": build_train_parser(),
        "label": build_label_parser(),
        "demo": build_demo_parser(),
    }


@pytest.mark.parametrize("command", ["eval", "fit", "label", "demo"])
def test_side_entry_point_has_every_option_of_the_subcommand_and_no_other(command: str) -> None:
    main = _options(_subparser(command))
    side = _options(_side_parsers()[command])
    assert set(main) == set(side), (
        f"only in medclip {command}: {set(main) - set(side)}; only in the side CLI: {set(side) - set(main)}"
    )
    for key in main:
        assert main[key] == side[key], f"{command} {key}: {main[key]} != {side[key]}"
    assert ("-q", "--quiet", "--no-progress") in side and ("-v", "--verbose") in side


def test_versus_policy_and_quiet_reach_both_label_commands(tmp_path) -> None:
    """``--versus-policy`` existed only in ``python -m medclip.knowledge``: now both parse it the same."""
    argv = [str(tmp_path / "m.parquet"), "--versus-policy", "first", "-q", "--findings", "pneumonia"]
    side = _side_parsers()["label"].parse_args(argv)
    main = build_parser().parse_args(["label", *argv])
    assert side.versus_policy == main.versus_policy == "first" and side.quiet and main.quiet
    with pytest.raises(SystemExit):
        build_parser().parse_args(["label", "m.parquet", "--versus-policy", "sometimes"])


def test_help_of_each_side_entry_point_lists_the_same_flags(capsys: pytest.CaptureFixture) -> None:
    for command, side in _side_parsers().items():
        flags = {s for a in _subparser(command)._actions for s in a.option_strings}
        text = side.format_help()
        assert all(flag in text for flag in flags), command
