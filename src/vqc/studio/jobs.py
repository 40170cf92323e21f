"""Studio jobs: fits and exports, each in its own process, one per project at a time, queued beyond.

A job is a file, STORE/studio/<project>/jobs/<id>.json, written only by the runner; its process
(vqc.studio.work) writes its progress to <id>.log and its outcome to <id>.result.json. So the
state of every job outlives the page that started it: a reloaded page asks again and finds it.
A cancel ends the job's whole process group and removes its scratch folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..errors import VqcError
from ..files import write_text_atomic
from .projects import Project, Projects

FINISHED = ("done", "failed", "cancelled")
PERCENT = re.compile(r"(\d{1,3})%\|")
LOG_TAIL = 4096  # bytes of a job's log read for its progress line


class JobRunner:
    def __init__(self, projects: Projects, store_folder: Path, db: str | None, poll_s: float = 0.3):
        self.projects, self.store_folder, self.db = projects, Path(store_folder), db
        self.running: dict[str, tuple[Project, subprocess.Popen]] = {}  # job id -> its project and process
        self.lock = threading.RLock()
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self._end_orphans()
        self.thread = threading.Thread(target=self._loop, name="studio-jobs", daemon=True)
        self.thread.start()

    def submit(self, project: Project, kind: str, by: str, **details) -> dict:
        job = {"id": uuid.uuid4().hex[:12], "project": project.name, "project_folder": str(project.folder),
               "kind": kind, "by": by, "state": "queued", "store": str(self.store_folder), "db": self.db,
               "queued_at": _now(), **details}
        with self.lock:
            self._write(project, job)
            self._start_next(project)
        return self.view(project, job["id"])

    def jobs(self, project: Project) -> list[dict]:
        folder = project.folder / "jobs"
        ids = [p.stem for p in folder.glob("*.json") if not p.name.endswith(".result.json")]
        return sorted((self.view(project, i) for i in ids), key=lambda j: j["queued_at"])

    def view(self, project: Project, job_id: str) -> dict:
        job = self._read(project, job_id)
        if job["state"] == "running":
            job["progress"] = progress(_tail(self._path(project, job_id).with_suffix(".log")))
        return {k: v for k, v in job.items() if k not in ("store", "db", "project_folder")}

    def cancel(self, project: Project, job_id: str, by: str) -> dict:
        with self.lock:
            job = self._read(project, job_id)
            entry = self.running.get(job_id)
            if entry is not None and entry[1].poll() is not None:  # it ended before the cancel came: that stands
                self._finish(project, job_id, entry[1])
                job = self._read(project, job_id)
            if job["state"] in FINISHED:
                raise VqcError(f"job {job_id} is {job['state']} already")
            if entry is not None:
                _end(self.running.pop(job_id)[1])
            shutil.rmtree(self._path(project, job_id).with_suffix(""), ignore_errors=True)
            job.update(state="cancelled", ended_at=_now(), cancelled_by=by)
            self._write(project, job)
            self._start_next(project)
        return self.view(project, job_id)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        with self.lock:
            for _, process in self.running.values():
                _end(process)

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self.stopping.wait(self.poll_s):
            with self.lock:
                for job_id, (project, process) in list(self.running.items()):
                    if process.poll() is not None:
                        self._finish(project, job_id, process)

    def _finish(self, project: Project, job_id: str, process: subprocess.Popen) -> None:
        del self.running[job_id]
        path = self._path(project, job_id)
        job = self._read(project, job_id)
        outcome_file = path.with_suffix(".result.json")
        outcome = json.loads(outcome_file.read_text()) if outcome_file.is_file() else {
            "error": f"the job's process ended with exit code {process.returncode} before it finished"}
        job.update(outcome, state="failed" if "error" in outcome else "done", ended_at=_now())
        self._write(project, job)
        self._start_next(project)

    def _start_next(self, project: Project) -> None:
        """Start the oldest queued job of `project` unless one of its jobs runs."""
        states = [self._read(project, p.stem) for p in (project.folder / "jobs").glob("*.json")
                  if not p.name.endswith(".result.json")]
        if any(j["state"] == "running" for j in states):
            return
        queued = sorted((j for j in states if j["state"] == "queued"), key=lambda j: j["queued_at"])
        if not queued:
            return
        job = queued[0]
        path = self._path(project, job["id"])
        log = open(path.with_suffix(".log"), "wb")
        self.running[job["id"]] = project, subprocess.Popen(
            [sys.executable, "-m", "vqc.studio.work", str(path)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, env=_worker_env())
        log.close()  # the child holds its own copy
        job.update(state="running", started_at=_now())
        self._write(project, job)

    def _end_orphans(self) -> None:
        """Jobs left running or queued by a studio that stopped: their process is gone with it."""
        for name in self.projects.names():
            project = self.projects.get(name)
            for path in (project.folder / "jobs").glob("*.json"):
                if path.name.endswith(".result.json"):
                    continue
                job = json.loads(path.read_text())
                if job["state"] == "running":
                    job.update(state="failed", error="the studio stopped while this job ran", ended_at=_now())
                    self._write(project, job)
            self._start_next(project)

    def _path(self, project: Project, job_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{12}", job_id):
            raise LookupError(f"no job {job_id!r} in project {project.name}")
        return project.folder / "jobs" / f"{job_id}.json"

    def _read(self, project: Project, job_id: str) -> dict:
        path = self._path(project, job_id)
        if not path.is_file():
            raise LookupError(f"no job {job_id} in project {project.name}")
        return json.loads(path.read_text())

    def _write(self, project: Project, job: dict) -> None:
        write_text_atomic(self._path(project, job["id"]), json.dumps(job, indent=1))


def progress(log: str) -> dict:
    """The job's latest step line and its latest bar (a tqdm line, as on the command line)."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", log) if line.strip()]
    last_step = max((i for i, line in enumerate(lines) if line.startswith("step: ")), default=-1)
    bars = [line for line in lines[last_step + 1:] if PERCENT.search(line)]  # a bar of the current step only
    bar = bars[-1] if bars else None
    return {"step": lines[last_step][len("step: "):] if last_step >= 0 else "starting", "bar": bar,
            "percent": int(PERCENT.search(bar).group(1)) if bar else None}


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - LOG_TAIL))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _end(process: subprocess.Popen) -> None:
    """End a job's process and every process it started; a kill where a polite stop is not heeded."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _worker_env() -> dict:
    """The environment of a job: this vqc importable whatever the working folder."""
    env = dict(os.environ)
    source = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
