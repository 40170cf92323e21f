"""What the web pages share, served from the package by every app with a page that asks for a key
(the service's operator page, the studio): static/keys.js, the API-key form and the fetch that
sends the kept key (one copy, so the pages ask, keep, retry and forget alike)."""
from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

KEYS_SCRIPT = "/static/keys.js"


def add_keys_script(app: FastAPI) -> None:
    """GET /static/keys.js on `app`; open to all, like the page that loads it."""
    @app.get(KEYS_SCRIPT, include_in_schema=False)
    def keys_script() -> Response:
        return Response((files("vqc") / "static" / "keys.js").read_text(), media_type="text/javascript")
