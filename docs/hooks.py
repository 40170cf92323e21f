"""MkDocs hook: adds the references made from the code (docs/gen_reference.py) and the changelog
to every build, so they cannot drift from the code. They are generated, never committed."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _generator():
    """docs/gen_reference.py, run against this checkout's vqc."""
    import importlib.util
    if str(HERE.parent / "src") not in sys.path:
        sys.path.insert(0, str(HERE.parent / "src"))
    spec = importlib.util.spec_from_file_location("gen_reference", HERE / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    from mkdocs.structure.files import File

    gen_reference = _generator()
    logging.getLogger("vqc").setLevel(logging.ERROR)  # the service's "no key file" warning is not the docs'
    pages = gen_reference.pages()
    pages["changelog.md"] = (HERE.parent / "CHANGELOG.md").read_text(encoding="utf-8")
    for path, text in pages.items():
        files.append(File.generated(config, path, content=text))
    return files
