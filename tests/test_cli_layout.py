"""The `vqc` command's shape: every command runs through `run=`, every argument says what it is,
a flag name means one thing wherever it appears, and no command module outgrows a reading."""
from __future__ import annotations

import argparse
from pathlib import Path

from vqc.cli import cli_parser

CLI = Path(__file__).resolve().parents[1] / "src" / "vqc" / "cli"
MAX_MODULE_LINES = 250
# Flags whose value is the command's own input, output or preset: what they hold is per command.
PER_COMMAND = {"--out", "--json", "--format", "--data", "--preset"}


def _commands(parser: argparse.ArgumentParser, prefix: str = "vqc"):
    """(command line, parser) for every command and subcommand, depth first."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}")


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _arguments(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_the_walk_reaches_nested_commands():
    lines = [line for line, _ in _commands(cli_parser())]
    assert {"vqc fit", "vqc models promote", "vqc station check", "vqc keys revoke", "vqc studio"} <= set(lines)


def test_every_command_names_the_function_that_runs_it():
    missing = [line for line, parser in _commands(cli_parser())
               if line != "vqc" and not _is_group(parser) and not callable(parser.get_default("run"))]
    assert not missing, f"commands without set_defaults(run=...): {missing}"


def test_every_argument_and_option_has_help():
    missing = [f"{line} {'/'.join(a.option_strings) or a.dest}" for line, parser in _commands(cli_parser())
               for a in _arguments(parser) if not (a.help or "").strip() or a.help == argparse.SUPPRESS]
    assert not missing, f"arguments without help: {missing}"


def test_a_flag_name_has_one_help_text_across_commands():
    helps: dict[str, dict[str, list[str]]] = {}
    for line, parser in _commands(cli_parser()):
        for action in _arguments(parser):
            for flag in action.option_strings:
                helps.setdefault(flag, {}).setdefault(action.help, []).append(line)
    differing = {flag: texts for flag, texts in helps.items() if len(texts) > 1 and flag not in PER_COMMAND}
    assert not differing, "declare these once in vqc/cli/options.py: " + "; ".join(
        f"{flag}: " + " | ".join(f"{where[0]}: {text!r}" for text, where in texts.items())
        for flag, texts in differing.items())


def test_the_shared_flags_are_declared_once():
    """A sample of the flags options.py declares: one text in every command that takes them."""
    parser = cli_parser()
    for flag, expected in (("--db", {"vqc predict", "vqc serve", "vqc records export", "vqc models add", "vqc update",
                                     "vqc studio"}),
                           ("--store", {"vqc serve", "vqc models list", "vqc update", "vqc studio"}),
                           ("--image-store", {"vqc predict", "vqc serve", "vqc evaluate", "vqc threshold",
                                              "vqc update"})):
        found = {line: a.help for line, p in _commands(parser) for a in _arguments(p) if flag in a.option_strings}
        assert expected <= set(found), (flag, expected - set(found))
        assert len(set(found.values())) == 1, (flag, found)


def test_each_command_module_is_short():
    long = {path.name: n for path in CLI.glob("*.py") if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these command modules (over {MAX_MODULE_LINES} lines): {long}"
