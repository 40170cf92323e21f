"""The documentation's references, made from the code: the `vqc` command from its argument
parser, STATION.yaml from the station config reader's schema, the HTTP API from the service's
OpenAPI document. docs/hooks.py adds the pages to every `mkdocs build`; tests/test_docs.py uses
the same functions to find undocumented options and keys.

    python docs/gen_reference.py OUT_DIR    # writes the pages, to read them without mkdocs
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cli_parser() -> argparse.ArgumentParser:
    """The `vqc` command's parser: the one place that knows where it is built."""
    from vqc.cli import cli_parser as parser
    return parser()


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)


def commands(parser: argparse.ArgumentParser | None = None, prefix: str = "vqc"):
    """(command line, parser, help) for vqc and every subcommand, depth first."""
    parser = parser or cli_parser()
    if prefix == "vqc":
        yield prefix, parser, parser.description
    for name, sub, text in _subcommands(parser):
        yield f"{prefix} {name}", sub, text
        yield from commands(sub, f"{prefix} {name}")


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        yield action


def undocumented_options() -> list[str]:
    """'vqc fit --stride' for every argument or option of every command without help text."""
    missing = []
    for line, parser, _ in commands():
        for action in _options(parser):
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{line} {'/'.join(action.option_strings) or action.dest}")
    return missing


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(action) -> str:
    if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS) \
            and not isinstance(action, argparse._VersionAction):
        value = ",".join(map(str, action.default)) if isinstance(action.default, tuple) else action.default
        return f"`{value}`"
    return ""


def cli_markdown() -> str:
    out = ["# Command line (`vqc`)", "",
           "Generated from the `vqc` command's argument parser: what `vqc COMMAND --help` prints, on one page.",
           "Every command answers a mistake it can name in one line, `vqc: error: ...`, with exit code 2.", ""]
    for line, parser, text in commands():
        depth = min(line.count(" ") + 1, 3)
        out += [f"{'#' * (depth + 1)} `{line}`", ""]
        if text:
            text = _cell(text)
            out += [text[0].upper() + text[1:] + ("" if text.endswith(".") else "."), ""]
        usage = parser.format_usage().replace("usage: ", "").strip()
        out += ["```text", usage, "```", ""]
        rows = [a for a in _options(parser) if not isinstance(a, argparse._VersionAction) or True]
        if rows:
            out += ["| argument | default | what it does |", "|---|---|---|"]
            for action in rows:
                name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
                if action.choices and not isinstance(action, argparse._SubParsersAction):
                    name += " {" + ", ".join(map(str, action.choices)) + "}"
                elif action.option_strings and action.nargs != 0 and action.metavar:
                    name += f" {action.metavar}"
                out.append(f"| {_cell(name)} | {_default(action)} | {_cell(action.help or '')} |")
            out.append("")
    return "\n".join(out)


def station_markdown() -> str:
    from vqc.station.config import schema
    out = ["# STATION.yaml", "",
           "Generated from the station config reader's own schema: every key `vqc station run` and "
           "`vqc station check` accept. Unknown keys are refused, naming the key. Paths are relative "
           "to the file's folder. `NAME` stands for a station's name. Complete files are in the "
           "[station tutorial](../tutorials/station.md).", "",
           "| key | type | default | allowed | what it means |", "|---|---|---|---|---|"]
    for row in schema():
        allowed = ", ".join(f"`{c}`" for c in row["choices"]) if row["choices"] else (
            f"at least {row['minimum']}" if row["minimum"] is not None else "")
        default = "" if row["default"] is None else f"`{row['default']}`"
        out.append(f"| `{row['key']}` | {row['type']} | {_cell(default)} | {_cell(allowed)} | "
                   f"{_cell(row['help'] or '')} |")
    return "\n".join(out) + "\n"


def openapi_document() -> dict:
    """The service's OpenAPI document, built without a model: the routes do not need one to be described."""
    from unittest import mock

    import vqc.serve as serve

    class _NoModel:
        def __init__(self, *args, **kwargs):
            self.models = self.records = None

    with mock.patch.object(serve, "Inspector", _NoModel):
        app = serve.create_app(None, db="none")
        return app.openapi()


def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items', {}))}"
    return schema.get("type", "any")


def http_markdown(document: dict | None = None) -> str:
    document = document or openapi_document()
    out = [f"# HTTP API ({document['info']['title']})", "",
           "Generated from the service's OpenAPI document. A running `vqc serve` serves the same document at "
           "`/openapi.json` and an interactive page at `/docs` (no internet needed). With `--api-key-file`, "
           "every `/v1` route asks for `Authorization: Bearer KEY` or `X-API-Key: KEY`; admin routes need an "
           "admin key. The raw document: [openapi.json](openapi.json).", "",
           document["info"].get("description", ""), ""]
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                out += [op["summary"] + ".", ""]
            if op.get("description"):
                out += [op["description"], ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | default |", "|---|---|---|---|---|"]
                for p in params:
                    schema = p.get("schema", {})
                    default = f"`{schema['default']}`" if "default" in schema else ""
                    out.append(f"| `{p['name']}` | {p['in']} | {_cell(_schema_name(schema))} | "
                               f"{'yes' if p.get('required') else 'no'} | {_cell(default)} |")
                out.append("")
            body = op.get("requestBody", {}).get("content", {})
            for kind, content in body.items():
                out += [f"Body: `{kind}`, {_cell(_schema_name(content.get('schema', {})))}.", ""]
            codes = ", ".join(f"{code} {r.get('description', '')}" for code, r in op.get("responses", {}).items())
            out += [f"Answers: {codes}.", ""]
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in schemas.items():
            if name in ("HTTPValidationError", "ValidationError"):
                continue
            out += [f"### {name}", "", "| field | type | required |", "|---|---|---|"]
            required = set(schema.get("required", []))
            for field, sub in schema.get("properties", {}).items():
                out.append(f"| `{field}` | {_cell(_schema_name(sub))} | {'yes' if field in required else 'no'} |")
            out.append("")
    return "\n".join(out)


def pages() -> dict[str, str]:
    """Generated page path (below docs/) -> its text."""
    document = openapi_document()
    return {"reference/cli.md": cli_markdown(), "reference/station-yaml.md": station_markdown(),
            "reference/http-api.md": http_markdown(document),
            "reference/openapi.json": json.dumps(document, indent=1)}


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "generated")
    for name, text in pages().items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text, encoding="utf-8")
        print(target / name)
