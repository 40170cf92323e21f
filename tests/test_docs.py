"""The documentation: a short README, a site that builds strictly, references that cover every
CLI option and STATION.yaml key, and tutorials whose commands parse and whose files exist."""
import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
QUICK_START = re.compile(r"<!-- quick-start -->\n```bash\n(.*?)```\n<!-- /quick-start -->", re.S)


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_short_guide_without_issue_numbers():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert not re.search(r"\bissues?\s*#?\d+", text, re.I), re.search(r"\bissues?\s*#?\d+", text, re.I)
    assert "--host" in text


def test_quick_start_has_two_commands_in_two_venvs_and_the_docs_show_the_same():
    lines = QUICK_START.search((ROOT / "README.md").read_text(encoding="utf-8")).group(1).strip().splitlines()
    assert len(lines) == 2
    venvs = [re.match(r"python3 -m venv (\S+) && ", line).group(1) for line in lines]
    assert venvs[0] != venvs[1]
    assert "vqc demo" in lines[0] and "pytest" in lines[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^rm -rf " + " ".join(map(re.escape, venvs)) + "$", ci, re.M)
    started = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    assert all(line in started for line in lines)


def test_every_cli_option_has_help_text():
    assert _generator().undocumented_options() == []


def test_an_option_without_help_text_is_found(monkeypatch):
    generator = _generator()
    parser = argparse.ArgumentParser(prog="vqc")
    sub = parser.add_subparsers(dest="command")
    fit = sub.add_parser("fit", help="fit")
    fit.add_argument("data", help="the images")
    fit.add_argument("--new-option")
    monkeypatch.setattr(generator, "cli_parser", lambda: parser)
    assert generator.undocumented_options() == ["vqc fit --new-option"]


def test_every_station_key_is_documented(monkeypatch):
    from vqc.station import config
    keys = {row["key"]: row["help"] for row in config.schema()}
    assert [key for key, text in keys.items() if not text] == []
    assert set(config.KEY_HELP) - set(keys) == set()  # no text for a key the reader does not know
    assert {"stations.NAME.camera.folder", "opcua.server", "mqtt.prefix", "queue.when_full"} <= set(keys)
    monkeypatch.delitem(config.KEY_HELP, "stations.NAME.camera.folder")
    assert [row["key"] for row in config.schema() if not row["help"]] == ["stations.NAME.camera.folder"]


def test_the_references_are_generated_from_the_code():
    generator = _generator()
    cli = generator.cli_markdown()
    assert "## `vqc serve`" in cli and "`--host`" in cli and "#### `vqc station run`" in cli
    station = generator.station_markdown()
    assert "`stations.NAME.camera.kind`" in station and "`aravis`, `video`, `folder`" in station
    http = generator.http_markdown()
    assert "## `POST /v1/inspect`" in http and "## `POST /v1/models/promote`" in http


def test_the_station_examples_are_complete_and_valid():
    from vqc.station.config import read_line
    examples = sorted((DOCS / "examples").glob("station-*.yaml"))
    assert len(examples) >= 2
    kinds = set()
    for example in examples:
        line, problems = read_line(example)
        # the tutorial makes the watched folder beside the copied file (mkdir -p incoming)
        assert all(": camera.folder: no folder " in p.replace("stations.cam1.", "") for p in problems), problems
        kinds |= {s.source.kind for s in line.stations} | {o for s in line.stations for o in s.outputs}
    assert {"folder", "aravis", "opcua", "mqtt"} <= kinds


def _commands(markdown: str):
    """Each command of the bash code blocks: lines split at &&, ; and |, the command inside
    VAR=$(...), prompts and comments removed."""
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"^\w+=\$\((.*)\)$", r"\1", line)
            for part in re.split(r"\s*(?:&&|;|\|)\s*", line):
                if part:
                    yield part


TUTORIALS = sorted((DOCS / "tutorials").glob("*.md")) + [DOCS / "getting-started.md", ROOT / "README.md"]
# the pages whose files a tutorial starts from ("You need ... from [Your part](your-part.md)")
NEEDS = {"models-that-change.md": ["your-part.md"], "on-the-line.md": ["your-part.md"],
         "station.md": ["your-part.md", "on-the-line.md"]}
# files a page names that the reader brings: their camera's folder, their own list or bundle
READER_FILES = {"camera_drop/", "bottle-bundle/", "paths.parquet", "STATION.yaml"}
REPOSITORY_PATH = re.compile(r"^(src|docs|bench|tests|tools)/")
FILE_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)*(/|\.(safetensors|txt|yaml|csv|parquet|sqlite|json))$")


def _made(words: list[str]) -> set[str]:
    """The files and folders a command makes: --out and --json, a > redirect, cp's target,
    mkdir's folders, vqc keys add's key file, vqc models add's store."""
    made = {after for before, after in zip(words, words[1:]) if before in ("--out", "--json", ">")}
    if words[0] == "cp":
        made.add(words[-1])
    if words[0] == "mkdir":
        made |= {word for word in words[1:] if not word.startswith("-")}
    if words[1:3] == ["keys", "add"]:
        made.add(words[3])
    if words[1:3] == ["models", "add"] and "--store" in words:
        made.add(words[words.index("--store") + 1])
    return made


def _is_made(name: str, made: set[str]) -> bool:
    return any(name.rstrip("/") == m.rstrip("/") or name.startswith(m.rstrip("/") + "/") for m in made)


def _files_made(page: Path) -> set[str]:
    made = set()
    for command in _commands(page.read_text(encoding="utf-8")):
        words = shlex.split(command)
        made |= _made(words) if len(words) > 1 else set()
    return made


def _problems(page: Path) -> tuple[list[str], int]:
    """What is wrong with the page's commands (a vqc line that does not parse, a repository path
    that does not exist, a file that no earlier step makes), and how many vqc lines were checked."""
    parser = _generator().cli_parser()
    problems, checked = [], 0
    made = set().union(*(_files_made(page.parent / needed) for needed in NEEDS.get(page.name, [])))
    for command in _commands(page.read_text(encoding="utf-8")):
        words = shlex.split(command)
        for word in filter(REPOSITORY_PATH.match, words):  # paths into this repository must exist
            if "*" in word and not any(ROOT.glob(word)):
                problems.append(f"{page.name}: {command}: {word} matches no file")
            elif "*" not in word and not (ROOT / word).exists():
                problems.append(f"{page.name}: {command}: {word} does not exist")
        made_here = _made(words) if len(words) > 1 else set()
        if words[0].rsplit("/", 1)[-1] != "vqc":
            made |= made_here
            continue
        checked += 1
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            problems.append(f"{page.name}: `{command}` does not parse")
        for word in words[1:]:
            if (FILE_NAME.match(word) and not REPOSITORY_PATH.match(word) and word not in made_here
                    and word not in READER_FILES and not _is_made(word, made)):
                problems.append(f"{page.name}: {command}: no earlier step makes {word}")
        made |= made_here
    return problems, checked


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_commands_parse_and_their_files_exist(page):
    problems, checked = _problems(page)
    assert problems == []
    assert checked, f"{page.name} has no vqc command"


def test_the_tutorials_followed_from_a_fresh_clone_are_checked():
    """Each tutorial's vqc lines are checked, those in $(...) and after a pipe too."""
    counts = {page.name: _problems(page)[1] for page in TUTORIALS}
    assert counts["your-part.md"] >= 4 and counts["scaling-out.md"] >= 8
    assert counts["models-that-change.md"] >= 17  # the two `VAR=$(vqc keys add ... | tail -1)` among them


def test_a_wrong_tutorial_command_is_caught(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("```bash\n.venv/bin/vqc fit src/vqc/demo_data/magnetic_tile --out m.safetensors  # fine\n"
                    "vqc fit docs/no-such-folder --out m.safetensors\nvqc serve m --hots 0.0.0.0\n"
                    "ls src/vqc/demo_data/magnetic_tile/test/*/*.jpg > list.txt\n"
                    "vqc serve m.safetensors --api-key-file keys.txt\nvqc keys add keys.txt --name op1\n"
                    "K=$(vqc keys add keys.txt --nme lead | tail -1)\n```\n")
    problems, checked = _problems(page)
    assert checked == 6
    assert problems == ["page.md: vqc fit docs/no-such-folder --out m.safetensors: docs/no-such-folder does not exist",
                        "page.md: `vqc serve m --hots 0.0.0.0` does not parse",
                        "page.md: ls src/vqc/demo_data/magnetic_tile/test/*/*.jpg > list.txt: "
                        "src/vqc/demo_data/magnetic_tile/test/*/*.jpg matches no file",
                        "page.md: vqc serve m.safetensors --api-key-file keys.txt: no earlier step makes keys.txt",
                        "page.md: `vqc keys add keys.txt --nme lead` does not parse"]


def test_the_few_shot_plot_reads_every_row_of_its_table():
    spec = importlib.util.spec_from_file_location("plot_results", DOCS / "plot_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.few_shot_rows()
    table = [line for line in (DOCS / "results" / "few-shot.md").read_text().splitlines()
             if re.match(r"\| \w+ \| \d+ \|", line)]
    assert len(rows) == len(table) == 15
    assert ("mvtec3d_tire", 210, 0.811, 0.811, 0.811) in rows


def test_the_pictures_exist_and_are_small():
    images = sorted((DOCS / "images").glob("*.png"))
    names = {p.name for p in images}
    assert {"readme.png", "overlays.png", "operator-page.png", "stations-page.png", "report.png", "few-shot.png"} <= names
    assert sum(p.stat().st_size for p in images) < 1_000_000


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip('mkdocs is not installed (pip install ".[docs]", in the test extras)')
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "WARNING" not in done.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--host" in cli and "vqc station check" in cli
    assert (tmp_path / "site" / "reference" / "openapi.json").is_file()
