"""MkDocs hook: adds the references made from the code (docs/gen_reference.py) to every build, so
they cannot drift from the code. They are generated, never committed."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]  # this checkout's vqc, and the generator beside this file


def on_files(files, config):
    from mkdocs.structure.files import File

    import gen_reference
    logging.getLogger("vqc").setLevel(logging.ERROR)  # the service's "no key file" warning is not the docs'
    for path, text in gen_reference.pages().items():
        files.append(File.generated(config, path, content=text))
    return files
