"""The operator's live view of a line: each station's last image with its overlay, verdict, score,
rate and errors, refreshed every second (GET /, /api/stations, /api/stations/NAME/last.png).
It reads the line's state only; it controls nothing, so it asks for no key.
"""
from __future__ import annotations

import io
import threading
from importlib.resources import files

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from PIL import Image

from .line import Line


def create_page(line: Line) -> FastAPI:
    app = FastAPI(title="vqc stations", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (files("vqc") / "static" / "stations.html").read_text()

    @app.get("/api/stations")
    def stations() -> list[dict]:
        return line.status()

    @app.get("/api/stations/{name}/last.png")
    def last(name: str) -> Response:
        station = line.stations.get(name)
        if station is None:
            raise HTTPException(404, f"no station {name!r}")
        item = station.state.last_item
        if item is None:
            raise HTTPException(404, f"station {name} has inspected no part yet")
        floor, top = station.models.live.model.normal_range()
        buffer = io.BytesIO()
        Image.fromarray(item.overlay(floor, top)).save(buffer, format="PNG", compress_level=1)
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    return app


class PageServer:
    """uvicorn in a thread, stopped with the line."""

    def __init__(self, line: Line, host: str, port: int):
        import uvicorn
        self.server = uvicorn.Server(uvicorn.Config(create_page(line), host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="station-page", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
