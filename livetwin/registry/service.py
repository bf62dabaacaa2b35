"""The model registry service: register immutable versions with metadata and artifacts, archive
(never delete) them, move aliases, and serve predictions of a version; all per namespace.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livetwin.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from livetwin.namespaces import check_namespace
from livetwin.registry.artifacts import ArtifactStore, hash_file
from livetwin.registry.lineage import LineageStore, code_hash
from livetwin.registry.serving import Predictor, load_predictor
from livetwin.registry.store import (
    ALIAS,
    ALL_NAMESPACES,
    DEFAULT_NAMESPACE,
    FILENAME,
    RegistryStore,
    artifact_immutable,
    check_name,
    immutable,
    in_namespace,
    of,
    parse_version_spec,
)

if TYPE_CHECKING:
    from livetwin.ports import Clock, OpenServiceDB

DEFAULT_MAX_ARTIFACT_BYTES = 512 * 1024 * 1024
PREDICTOR_CACHE = 16
DEFAULT_ALIAS = "production"


def model_node_id(name: str, version: int, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The lineage node of a registered version: `model:{name}/{version}`, or
    `model:{namespace}/{name}/{version}` outside the default namespace (a name has no '/', so
    the ids of different namespaces never meet)."""
    if namespace == DEFAULT_NAMESPACE:
        return f"model:{name}/{version}"
    return f"model:{namespace}/{name}/{version}"


class Registry:
    """Model versions of every kind, per (namespace, name); metadata in the service database
    `registry` (`open_db`), blobs in `artifacts`, uploads staged in `tmp_dir`, each version a
    node in `lineage`. Every method takes `namespace=` (default "default")."""

    def __init__(
        self,
        *,
        clock: Clock,
        open_db: OpenServiceDB,
        lineage: LineageStore,
        artifacts: ArtifactStore,
        tmp_dir: str | Path,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        model_refs: Callable | None = None,
    ):
        self.clock = clock
        self.model_refs = model_refs  # resolves a version's ref (the core's ModelRefs); None: any
        self.store = RegistryStore(open_db)
        self.artifacts = artifacts
        self.lineage = lineage
        self.max_artifact_bytes = max_artifact_bytes
        self.tmp_dir = Path(tmp_dir)
        self._predictors: OrderedDict[tuple[str, str, int], Predictor] = OrderedDict()
        self._predictors_lock = threading.Lock()

    def start(self) -> Registry:
        """Check the artifact store (a missing S3 bucket fails here, with the fix)."""
        self.artifacts.check()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self

    def stop(self) -> None:
        self.store.close()

    # ---- registering -------------------------------------------------------------------------

    def register(
        self,
        name: str,
        body: Any,
        artifacts: Mapping[str, bytes | Path] | None = None,
        *,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> dict:
        """Register the next version of `name` in `namespace`; `artifacts` (file name -> bytes
        or a path) are uploaded right away and must be listed in the body's `artifacts`."""
        namespace = check_namespace(namespace)
        check_name(name, "name")
        spec = parse_version_spec(body)
        if artifacts:
            spec.artifacts = list(dict.fromkeys([*spec.artifacts, *artifacts]))
            for i, filename in enumerate(spec.artifacts):
                check_name(filename, f"artifacts.{i}", FILENAME)
        extra: dict = {"code_hash": None}
        if spec.ref is not None:
            flavor = spec.flavor or "python"
            if flavor == "python":
                from livetwin.models.base import resolve_model

                try:
                    model = (self.model_refs or resolve_model)(spec.ref)
                except InvalidInput as exc:
                    raise InvalidInput(exc.message, field="ref", fix=exc.fix) from None
                extra["code_hash"] = code_hash(spec.ref, model.fn)
        elif spec.flavor in (None, "python"):
            if spec.kind != "inductive":
                raise InvalidInput(
                    f"a {spec.kind} model of flavor python needs a ref",
                    field="ref",
                    fix="give ref: 'package.module:function' (or 'fmu:path'), or another flavor",
                )
        number = self.store.add_version(name, spec, extra, self.clock(), namespace)
        self._record_lineage(namespace, name, number, spec, extra["code_hash"])
        for filename, content in (artifacts or {}).items():
            if isinstance(content, Path):
                self.put_artifact_file(name, number, filename, content, namespace=namespace)
            else:
                self.put_artifact(name, number, filename, [content], namespace=namespace)
        return self.get(name, number, namespace=namespace)

    def _record_lineage(
        self, namespace: str, name: str, number: int, spec, hash_: str | None
    ) -> None:
        """A model node per version, fed by its parents and by its training data window."""
        parents = [model_node_id(p.name, p.version, p.namespace or namespace) for p in spec.parents]
        parents = [p for p in parents if self.lineage.exists(p)]
        if spec.training is not None:
            window = {"start": spec.training.start, "end": spec.training.end}
            owner = (name, window) if namespace == DEFAULT_NAMESPACE else (namespace, name, window)
            digest = hashlib.sha256(repr(owner).encode()).hexdigest()[:16]
            parents.append(
                self.lineage.ensure(
                    f"data:training/{digest}",
                    "data",
                    f"training data of {name}",
                    inputs={"window": window, "description": spec.training.description},
                )
            )
        inputs = {"version": number, "kind": spec.kind, "ref": spec.ref, "flavor": spec.flavor}
        self.lineage.ensure(
            model_node_id(name, number, namespace),
            "model",
            name,
            inputs={"namespace": namespace, **inputs},
            parents=parents,
            code_hash=hash_,
        )

    def put_artifact(
        self,
        name: str,
        version: int,
        filename: str,
        chunks,
        *,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> dict:
        """Upload a declared artifact from an iterable of byte chunks (size-limited)."""
        self.check_upload(name, version, filename, namespace=namespace)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                size = 0
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_artifact_bytes:
                        raise self.too_large()
                    out.write(chunk)
            return self.put_artifact_file(name, version, filename, Path(tmp), namespace=namespace)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put_artifact_file(
        self,
        name: str,
        version: int,
        filename: str,
        path: Path,
        *,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> dict:
        """Upload a declared artifact from a file (hashed, stored, then recorded)."""
        namespace = self.check_upload(name, version, filename, namespace=namespace)
        sha256, size = hash_file(path)
        if size > self.max_artifact_bytes:
            raise self.too_large()
        self.artifacts.put(path, sha256)
        self.store.add_artifact(name, version, filename, sha256, size, self.clock(), namespace)
        return {
            "namespace": namespace,
            "name": name,
            "version": version,
            "filename": filename,
            "sha256": sha256,
            "size": size,
        }

    def check_upload(
        self, name: str, version: int, filename: str, *, namespace: str | None = DEFAULT_NAMESPACE
    ) -> str:
        """Refuse an upload before its bytes are read; the checked namespace."""
        namespace = check_namespace(namespace)
        check_name(name, "name")
        check_name(filename, "filename", FILENAME)
        if self.store.artifact_state(name, version, filename, namespace):
            raise artifact_immutable(name, version, filename, namespace)
        return namespace

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the artifact exceeds the limit of {self.max_artifact_bytes} bytes",
            field="body",
            fix="upload a smaller artifact (compress it, or split it into several declared files)"
            " or raise the registry's max_artifact_bytes",
        )

    def rewrite(
        self, name: str, version: int | str, *, namespace: str | None = DEFAULT_NAMESPACE
    ) -> None:
        """Any attempt to write an existing (or a chosen) version number: always a Conflict."""
        namespace = check_namespace(namespace)
        check_name(name, "name")
        number = self.store.resolve(name, version, namespace)
        raise immutable(name, number, self.store.version_count(name, namespace) + 1, namespace)

    # ---- archive and aliases ---------------------------------------------------------------------

    def archive(
        self,
        name: str,
        version: int | str,
        archived: bool = True,
        *,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> dict:
        """Hide (or show again) a version in default listings; it stays readable by number."""
        namespace = check_namespace(namespace)
        number = self.store.resolve(name, version, namespace)
        self.store.set_archived(name, number, archived, self.clock(), namespace)
        return self.get(name, number, namespace=namespace)

    def set_alias(
        self,
        name: str,
        alias: str,
        version: Any,
        author: str | None = None,
        *,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> dict:
        """Point `alias` at a version (a new alias record; the history is kept)."""
        namespace = check_namespace(namespace)
        check_name(alias, "alias", ALIAS)
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInput(
                "version must be an integer", field="version", fix='send {"version": 3}'
            )
        number = self.store.resolve(name, version, namespace)
        if self.get(name, number, namespace=namespace)["archived"]:
            raise Conflict(
                f"{name}/{number} is archived",
                field="version",
                fix=f"unarchive it (POST .../versions/{number}/unarchive"
                f"{in_namespace(namespace)}) or choose another",
            )
        self.store.set_alias(name, alias, number, self.clock(), author, namespace)
        return self.aliases(name, namespace=namespace)

    def aliases(self, name: str, *, namespace: str | None = DEFAULT_NAMESPACE) -> dict:
        namespace = check_namespace(namespace)
        self.store.version_count(name, namespace)
        return {
            "namespace": namespace,
            "name": name,
            "aliases": self.store.current_aliases(name, namespace),
            "history": self.store.alias_history(name, namespace),
        }

    # ---- reads -------------------------------------------------------------------------------

    def get(
        self, name: str, version: int | str, *, namespace: str | None = DEFAULT_NAMESPACE
    ) -> dict:
        namespace = check_namespace(namespace)
        check_name(name, "name")
        number = self.store.resolve(name, version, namespace)
        return self._with_use(self.store.version(name, number, namespace), namespace)

    def _with_use(self, record: dict, namespace: str) -> dict:
        """`record` with its lineage node and `used_by`: the runs that used the version, per
        job (count, first, last, the newest and the twins it published)."""
        record["lineage"] = model_node_id(record["name"], record["version"], namespace)
        record["used_by"] = [u for u in self.lineage.fed(record["lineage"]) if u["kind"] == "run"]
        return record

    def versions(
        self,
        name: str,
        *,
        archived: bool = False,
        limit: int = 100,
        offset: int = 0,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> list[dict]:
        namespace = check_namespace(namespace)
        check_name(name, "name")
        listed = self.store.versions(
            name, archived=archived, limit=limit, offset=offset, namespace=namespace
        )
        return [self._with_use(record, namespace) for record in listed]

    def models(
        self, *, archived: bool = False, namespace: str | None = DEFAULT_NAMESPACE
    ) -> list[dict]:
        """The models of `namespace` ('*': of every namespace) with their latest version."""
        if namespace != ALL_NAMESPACES:
            namespace = check_namespace(namespace)
        out = []
        for space, name in self.store.names(namespace):
            listed = self.store.versions(
                name, archived=archived, limit=10**9, offset=0, namespace=space
            )
            if not listed:
                continue
            latest = listed[-1]
            out.append(
                {
                    "namespace": space,
                    "name": name,
                    "versions": len(listed),
                    "latest": latest["version"],
                    "kind": latest["kind"],
                    "description": latest["description"],
                    "aliases": self.store.current_aliases(name, space),
                }
            )
        return out

    def default_version(self, name: str, *, namespace: str | None = DEFAULT_NAMESPACE) -> int:
        """What serving uses without a version: the `production` alias, else the newest
        version that is not archived."""
        namespace = check_namespace(namespace)
        aliases = self.store.current_aliases(name, namespace)
        if DEFAULT_ALIAS in aliases:
            return aliases[DEFAULT_ALIAS]
        listed = self.store.versions(
            name, archived=False, limit=10**9, offset=0, namespace=namespace
        )
        if not listed:
            raise NotFound(
                f"every version of model {of(name, namespace)} is archived",
                field="version",
                fix="name a version or alias explicitly",
            )
        return listed[-1]["version"]

    def artifact(
        self,
        name: str,
        version: int | str,
        filename: str,
        *,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> tuple[dict, Iterator]:
        """An uploaded artifact's record and its bytes (chunks)."""
        namespace = check_namespace(namespace)
        check_name(filename, "filename", FILENAME)
        number = self.store.resolve(name, version, namespace)
        info = self.store.artifact(name, number, filename, namespace)
        return info, self.artifacts.read(info["sha256"])

    # ---- serving -----------------------------------------------------------------------------

    def predictor(
        self,
        name: str,
        version: int | str | None = None,
        *,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> tuple[int, Predictor]:
        """The loaded version (default: `default_version`) and its number; cached."""
        namespace = check_namespace(namespace)
        check_name(name, "name")
        number = (
            self.default_version(name, namespace=namespace)
            if version is None
            else self.store.resolve(name, version, namespace)
        )
        key = (namespace, name, number)
        with self._predictors_lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return number, self._predictors[key]
        record = self.get(name, number, namespace=namespace)
        missing = [a["filename"] for a in record["artifacts"] if not a["uploaded"]]
        if missing:
            raise Conflict(
                f"{name}/{number} is incomplete: {', '.join(missing)} not uploaded",
                field="artifacts",
                fix=f"PUT /api/models/{name}/versions/{number}/artifacts/{missing[0]}"
                + in_namespace(namespace),
            )
        predictor = load_predictor(record, _Artifacts(self, namespace, name, number))
        with self._predictors_lock:  # versions are immutable, so a loaded one stays right
            self._predictors[key] = predictor
            while len(self._predictors) > PREDICTOR_CACHE:
                self._predictors.popitem(last=False)
        return number, predictor

    def predict(
        self,
        name: str,
        body: Any,
        version: int | str | None = None,
        *,
        namespace: str | None = DEFAULT_NAMESPACE,
    ) -> dict:
        namespace = check_namespace(namespace)
        number, predictor = self.predictor(name, version, namespace=namespace)
        return {"namespace": namespace, "name": name, "version": number, **predictor.predict(body)}


class _Artifacts:
    """The `ArtifactReader` loaders get: one version's files, whole."""

    def __init__(self, registry: Registry, namespace: str, name: str, version: int):
        self.registry, self.namespace = registry, namespace
        self.name, self.version = name, version

    def read(self, filename: str) -> bytes:
        record = self.registry.get(self.name, self.version, namespace=self.namespace)
        if filename not in [a["filename"] for a in record["artifacts"]]:
            raise InvalidInput(
                f"{self.name}/{self.version} has no artifact '{filename}', which its flavor needs",
                field="artifacts",
                fix=f"register a new version that lists '{filename}' in artifacts and upload it",
            )
        _, chunks = self.registry.artifact(
            self.name, self.version, filename, namespace=self.namespace
        )
        return b"".join(chunks)
