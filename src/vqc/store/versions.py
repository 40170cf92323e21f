"""The model store: versions in a folder, what each target runs and every admin action in the database.

A store is a folder: its database (records.sqlite unless another is named), the images kept of
the inspections recorded there, the studio's projects, and each model file (or line bundle) in its
versions folder, named by its version: the first 12 hex digits of its SHA-256, the same identity
the records give the model that judged (vqc.records.ModelIdentity). `ModelStore` is the one place
that knows this layout; everyone else asks it.

A target is a service (`vqc serve --store`) or a station by name; its live slot judges parts, its
shadow slot scores them beside the live one and is never acted on. Promotion, rollback and shadow
changes are rows in `deployments` (the newest per target and slot is in force) and in `audit`, in
one transaction.

A version's product is its name (the model file's stem or the bundle's folder name when it was
added; a new threshold or an update keeps it). Promotion refuses a version of another product
than the one live on the target, unless asked for (a line's model replaced by another part's).
"""
from __future__ import annotations

import getpass
import shutil
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from ..bundle import MANIFEST, is_bundle, read_manifest
from ..errors import VqcError
from ..files import atomic_path
from ..threshold import Threshold
from ..modelfile import read_metadata, write_threshold
from ..records import ModelIdentity, database_for, migrate
from .tables import AuditEntry, Deployment, ModelVersion

SLOTS = ("live", "shadow")
DATABASE = "records.sqlite"  # the store's database unless another is named


def local_actor() -> str:
    """Who acts from the command line: the login name (the service uses the API key's name)."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in a container
        return "cli"


def model_facts(path: Path) -> dict:
    """config, info and threshold of a model file or a line bundle, read without torch."""
    if path.is_dir():
        if not is_bundle(path):
            raise VqcError(f"{path} is a folder without {MANIFEST}: not a line bundle")
        manifest = read_manifest(path)
        return {"config": manifest["config"], "info": manifest["info"], "threshold": manifest["threshold"],
                "kind": "bundle"}
    if not path.is_file():
        raise VqcError(f"model file {path} does not exist")
    return {**read_metadata(path), "kind": "file"}


class ModelStore:
    """A model store: its versions, deployments and audit trail, and where each of its parts sits."""

    def __init__(self, folder: str | Path, database: sa.Engine, records_url: str | Path):
        """records_url: the database's URL as given (with its password: the service opens its records there)."""
        self.folder, self.database, self.records_url = Path(folder), database, records_url

    @classmethod
    def open(cls, folder: str | Path, db: str | None = None, create: bool = False) -> "ModelStore":
        """The store in `folder`; its tables in `db` (default: the store's own SQLite file, the records
        database `vqc serve --store` writes inspections to as well). A folder that is not a store
        is refused unless `create` (adding the first version makes one)."""
        folder = Path(folder)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            cls.check_folder(folder, db)
        records_url = db or folder / DATABASE
        database = database_for(records_url)
        migrate(database)
        return cls(folder, database, records_url)

    @staticmethod
    def check_folder(folder: str | Path, db: str | None = None) -> None:
        """A VqcError in one line unless `folder` is a store: a folder with its database in it (with
        `db`, a database elsewhere, any folder)."""
        folder = Path(folder)
        if not folder.is_dir() or (db is None and not (folder / DATABASE).is_file()):
            raise VqcError(f"{folder} is not a model store (no {DATABASE} in it): make one with "
                           f"vqc models add MODEL --store {folder}")

    @property
    def images_folder(self) -> Path:
        """The images (and their overlays) kept of the inspections in its database."""
        return self.folder / "images"

    @property
    def models_folder(self) -> Path:
        """The versions' model files and line bundles."""
        return self.folder / "versions"

    @property
    def studio_folder(self) -> Path:
        """The studio's projects on this store."""
        return self.folder / "studio"

    # ------------------------------------------------------------ versions

    def add(self, path: str | Path, by: str, parent: str | None = None, note: str | None = None) -> dict:
        """Copy a model file or bundle into the store as a version (the same file twice: one version)."""
        path = Path(path)
        facts = model_facts(path)
        identity = ModelIdentity.of(path, "")
        existing = self.find(identity.version)
        if existing is not None:
            return existing
        if parent is not None:
            parent = self.get(parent)["version"]
        stored = self.models_folder / (identity.version if facts["kind"] == "bundle"
                                       else f"{identity.version}.safetensors")
        self._copy(path, stored)
        info = facts["info"]
        evidence = {"threshold": facts["threshold"], "evaluation": info.get("evaluation"),
                    "n_train": info.get("n_train"), "normal_scores": len(info.get("normal_scores", [])),
                    "weights_source": info.get("weights_source"), "update": info.get("update")}
        row = {"version": identity.version, "sha256": identity.sha256, "name": identity.name, "kind": facts["kind"],
               "path": stored.relative_to(self.folder).as_posix(), "parent": parent,
               "fit_manifest": info.get("fit_manifest", []), "options": facts["config"], "evidence": evidence,
               "added_at": _now(), "added_by": by, "note": note}
        with self.database.begin() as connection:
            connection.execute(sa.insert(ModelVersion), [row])
            self._audit(connection, by, "add", None, identity.version, {"name": identity.name, "parent": parent})
        return self.get(identity.version)

    @staticmethod
    def _copy(source: Path, target: Path) -> None:
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():  # a bundle: copied beside, then renamed into place whole
            partial = target.with_name(f".{target.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(source, partial)
            partial.rename(target)
        else:
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)

    def find(self, version: str) -> dict | None:
        """A version by its 12 digits or a unique prefix of 4 or more; None when there is none."""
        if len(version) < 4:
            raise VqcError(f"give at least 4 digits of a model version (got {version!r})")
        with self.database.connect() as connection:
            rows = connection.execute(sa.select(ModelVersion.__table__)
                                      .where(ModelVersion.version.startswith(version, autoescape=True))).all()
        if len(rows) > 1:
            raise VqcError(f"model version {version} is ambiguous: {', '.join(r.version for r in rows)}")
        return dict(rows[0]._mapping) if rows else None

    def get(self, version: str) -> dict:
        found = self.find(version)
        if found is None:
            raise VqcError(f"no model version {version} in the store {self.folder}")
        return found

    def path_of(self, version: str) -> Path:
        """Where a version's model file or line bundle is."""
        return self.folder / self.get(version)["path"]

    def versions(self) -> list[dict]:
        with self.database.connect() as connection:
            rows = connection.execute(sa.select(ModelVersion.__table__).order_by(ModelVersion.added_at)).all()
        return [dict(r._mapping) for r in rows]

    def with_threshold(self, version: str, threshold: Threshold, by: str) -> dict:
        """A new version: the same model with another threshold (a version names what judged, threshold
        included), its parent the old one. Torch-free for files and bundles alike."""
        row = self.get(version)
        source = self.path_of(row["version"])
        scratch = self.models_folder / f".threshold-{row['version']}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            if row["kind"] == "bundle":
                shutil.copytree(source, scratch)
                made = scratch
            else:
                scratch.mkdir(parents=True)
                made = scratch / f"{row['name']}.safetensors"
                shutil.copyfile(source, made)
            write_threshold(made, threshold)
            return self.add(made, by, parent=row["version"], note=f"threshold {threshold.describe()}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------ deployments

    def deployment(self, target: str) -> dict:
        """{"live": version or None, "shadow": version or None} of a target."""
        found = {slot: None for slot in SLOTS}
        with self.database.connect() as connection:
            for slot in SLOTS:
                row = connection.execute(sa.select(Deployment.version).where(
                    Deployment.target == target, Deployment.slot == slot).order_by(Deployment.id.desc()).limit(1)).first()
                found[slot] = row[0] if row else None
        return found

    def deployments(self) -> dict[str, dict]:
        with self.database.connect() as connection:
            targets = [t for (t,) in connection.execute(sa.select(Deployment.target).distinct())]
        return {target: self.deployment(target) for target in sorted(targets)}

    def promote(self, target: str, version: str, by: str, other_product: bool = False) -> str:
        """Make `version` live on `target`; if it was in the shadow slot, the slot is emptied. A
        version of another product than the live one is refused unless `other_product`."""
        row = self.get(version)
        version = row["version"]
        current = self.deployment(target)
        if current["live"] is not None and not other_product:
            live = self.get(current["live"])
            if live["name"] != row["name"]:
                raise VqcError(f"{version} is a {row['name']} model and {target} runs {live['name']} "
                               f"({live['version']}): to put another product's model on {target}, promote it "
                               f"with --other-product (API: other_product true)")
        rows = [self._deployment(target, "live", version, "promote", by)]
        if current["shadow"] == version:
            rows.append(self._deployment(target, "shadow", None, "promote", by))
        self._change(rows, by, "promote", target, version, {"was": current["live"]})
        return version

    def rollback(self, target: str, by: str) -> str:
        """Back to the version that was live before the current one on `target`."""
        with self.database.connect() as connection:
            history = [v for (v,) in connection.execute(sa.select(Deployment.version).where(
                Deployment.target == target, Deployment.slot == "live").order_by(Deployment.id.desc()))]
        earlier = next((v for v in history[1:] if v != history[0]), None) if history else None
        if earlier is None:
            raise VqcError(f"target {target} has no earlier live version to roll back to")
        self._change([self._deployment(target, "live", earlier, "rollback", by)], by, "rollback", target, earlier,
                     {"was": history[0]})
        return earlier

    def set_shadow(self, target: str, version: str | None, by: str) -> str | None:
        """Put `version` in `target`'s shadow slot (None: empty it)."""
        version = self.get(version)["version"] if version else None
        if version is not None and version == self.deployment(target)["live"]:
            raise VqcError(f"{version} is live on {target}: a shadow is a candidate beside the live model")
        self._change([self._deployment(target, "shadow", version, "shadow", by)], by, "shadow", target, version, {})
        return version

    @staticmethod
    def _deployment(target, slot, version, action, by) -> dict:
        return {"target": target, "slot": slot, "version": version, "action": action, "at": _now(), "by": by}

    def _change(self, rows: list[dict], by: str, action: str, target: str, version, detail: dict) -> None:
        with self.database.begin() as connection:
            connection.execute(sa.insert(Deployment), rows)
            self._audit(connection, by, action, target, version, detail)

    # ------------------------------------------------------------ audit

    def audit(self, actor: str, action: str, target: str | None = None, version: str | None = None,
              detail: dict | None = None) -> None:
        with self.database.begin() as connection:
            self._audit(connection, actor, action, target, version, detail or {})

    @staticmethod
    def _audit(connection, actor, action, target, version, detail) -> None:
        connection.execute(sa.insert(AuditEntry), [{"at": _now(), "actor": actor, "action": action, "target": target,
                                                    "version": version, "detail": detail}])

    def audit_trail(self, limit: int = 100) -> list[dict]:
        """The newest admin actions first."""
        with self.database.connect() as connection:
            rows = connection.execute(sa.select(AuditEntry.__table__).order_by(AuditEntry.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]


def _now() -> datetime:
    return datetime.now(timezone.utc)
