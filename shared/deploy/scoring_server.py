"""The local scoring endpoint: serves each endpoint's champion over HTTP (Hypercorn, shared/web).

    python -m shared.deploy.scoring_server --home .conveyor --host 127.0.0.1 --port 5088

Routes:
  GET  /health                      -> {"status": "ok", "home": ..., "pid": ...}
  GET  /endpoints/<name>            -> the endpoint file (current + history) and the loaded version(s)
  POST /endpoints/<name>/score      -> {"predictions": [...], "model": name, "version": v}
                                       a routed endpoint: {"predictions": [...], "partitions": [p per row],
                                                           "models": {p: {"model", "version"}}}

The scoring body speaks MLflow's scoring protocol -- what ``mlflow models serve`` and an Azure
ML managed online endpoint serving an MLflow model accept -- so one client works against both:
a JSON object with exactly one of

  {"dataframe_split": {"columns": [...], "data": [[...], ...], "index": [...]}}   (index optional)
  {"dataframe_records": [{column: value}, ...]}
  {"instances": [{column: value}, ...]}
  {"inputs": {column: [values], ...}}  or  {"inputs": [{column: value}, ...]}

and an optional ``"params"`` object (accepted; scikit-learn models take none). Conveyor's own
``{"rows": [{column: value}, ...]}`` and a bare list of rows are accepted too. Requests need
``Content-Type: application/json`` (as both of those servers do); the body goes through
shared.safejson (16 MiB, depth, number length, NaN/Infinity, surrogates). Every error is
``{"error": {"code", "message", "field"}}`` naming the field (``dataframe_split.data[3][1]``,
``rows[0].price``); nothing a model or a library raised is echoed (it is logged).

Routed endpoints (many models: one champion per partition, e.g. per store). Each row is
routed by its value in the endpoint's partition key column (``partition_key`` of the endpoint
file, e.g. ``store``: ``7``, ``7.0`` and ``"7"`` all name partition ``7``), so one request may
mix partitions; the predictions come back in row order with each row's partition. A request
whose rows lack the column may name the partition once as ``"params": {"partition": "7"}``
(the column is then filled in with it). A partition the endpoint does not serve is a 404
``unknown_partition`` naming it and the cell (or ``params.partition``) it came from; a row
without the column and no ``params.partition`` is a 400 naming the column.

The endpoint files (``<home>/endpoints/<name>.json``) are written by LocalScoringDeployer.
Every request looks at the file's stamp (inode, mtime, size), parses it again only when it
changed, and reloads a model (under a per-endpoint/partition lock) only when its entry
changed, so a promotion swaps that one model without restarting the server.

Loading models safely. MLflow 3 saves scikit-learn models in the skops format by default and
skops refuses types outside its allow-list; tree ensembles (RandomForest) need
``sklearn.tree._tree.Tree``, which the sample's train.py passes as ``skops_trusted_types`` on
save. The allow-list recorded in a model's MLmodel file is written by whoever made the model,
so this server does not rely on it: before loading, it asks skops which untrusted types the
file holds and refuses any outside its own list (TRUSTED_SKOPS_TYPES, extendable with
CONVEYOR_SCORING_TRUSTED_TYPES). Pickle/cloudpickle models and non-sklearn flavors (whose
loader code runs on load) are refused unless CONVEYOR_SCORING_ALLOW_PICKLE=true. A model that
cannot be served answers 503 naming the endpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.deploy.scoring.protocol import (
    PROTOCOL_KEYS,
    RequestError,
    Table,
    input_columns,
    parse_scoring_body,
    partition_order,
    predict_rows,
    route_rows,
    unknown_partition,
)
from shared.errors import ValidationError

__all__ = ["PROTOCOL_KEYS", "RequestError", "ScoringState", "check_model_is_safe", "parse_scoring_body", "serve"]

ENDPOINT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PID_FILE = "scoring-server.json"
MAX_BODY = 16 * 1024 * 1024
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.tree._tree.Tree"})
log = logging.getLogger("conveyor.scoring")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _trusted_types() -> set[str]:
    extra = os.environ.get("CONVEYOR_SCORING_TRUSTED_TYPES", "")
    return set(TRUSTED_SKOPS_TYPES) | {t.strip() for t in extra.split(",") if t.strip()}


def check_model_is_safe(model_dir: Path) -> None:
    """Refuse a model whose loading could run code we did not vet (see the module docstring)."""
    import yaml

    meta = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8")) or {}
    flavors = meta.get("flavors") or {}
    allow_pickle = _truthy(os.environ.get("CONVEYOR_SCORING_ALLOW_PICKLE"))
    pyfunc = flavors.get("python_function") or {}
    if pyfunc.get("loader_module") != "mlflow.sklearn" and not allow_pickle:
        raise RequestError(503, f"refusing to load a {pyfunc.get('loader_module')!r} model (only mlflow.sklearn)")
    sk = flavors.get("sklearn") or {}
    rel = str(sk.get("pickled_model") or pyfunc.get("model_path") or "")
    data = (model_dir / rel).resolve()
    if not rel or model_dir.resolve() not in data.parents:
        raise RequestError(503, f"model file {rel!r} is not inside the model directory")
    fmt = sk.get("serialization_format", "pickle")
    if fmt == "skops":
        import skops.io

        untrusted = set(skops.io.get_untrusted_types(file=str(data)))
        refused = sorted(untrusted - _trusted_types())
        if refused:
            raise RequestError(503, f"model holds types this server does not trust: {refused}")
    elif not allow_pickle:
        raise RequestError(503, f"refusing a {fmt} model: set CONVEYOR_SCORING_ALLOW_PICKLE=true to trust it")


class LoadedModel:
    def __init__(self, entry: dict[str, Any], model: Any) -> None:
        self.entry = entry
        self.model = model
        self.columns = input_columns(model)


@dataclass
class Endpoint:
    """One endpoint file as read, and the stamp (inode, mtime, size) it was read at."""

    name: str
    doc: dict[str, Any]
    stamp: tuple[int, int, int]

    @property
    def routed(self) -> bool:
        return isinstance(self.doc.get("partitions"), dict)

    @property
    def partition_key(self) -> str:
        return str(self.doc.get("partition_key") or "")

    def served_partitions(self) -> list[str]:
        slots = self.doc.get("partitions") or {}
        served = [p for p, slot in slots.items() if isinstance(slot, dict) and isinstance(slot.get("current"), dict)]
        return sorted(served, key=partition_order)

    def entry(self, partition: str | None) -> dict[str, Any]:
        if partition is None:
            return dict(self.doc["current"])
        slot = (self.doc.get("partitions") or {}).get(partition)
        if not isinstance(slot, dict) or not isinstance(slot.get("current"), dict):
            raise self.unknown(partition, None)
        return dict(slot["current"])

    def unknown(self, partition: str, field: str | None) -> RequestError:
        return unknown_partition(self.name, partition, field, self.served_partitions())


class ScoringState:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.endpoints_dir = home / "endpoints"
        self._models: dict[tuple[str, str | None], LoadedModel] = {}
        self._docs: dict[str, Endpoint] = {}
        self._locks: dict[tuple[str, str | None], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, key: tuple[str, str | None]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def endpoint_file(self, name: str) -> Path:
        if not ENDPOINT_RE.match(name):
            raise RequestError(404, f"no endpoint {name[:64]!r}", field="endpoint")
        return self.endpoints_dir / f"{name}.json"

    def read_endpoint(self, name: str) -> Endpoint:
        """The endpoint file, parsed again only when it was replaced or changed since the last read."""
        path = self.endpoint_file(name)
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._docs.get(name)
            if cached is not None and cached.stamp == stamp:
                return cached
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RequestError(404, f"no endpoint {name!r}", field="endpoint") from None
        except (OSError, ValueError):
            log.exception("scoring: cannot read the endpoint file %s", path)
            raise RequestError(503, f"endpoint {name!r} cannot be read; see the scoring server's log") from None
        if not isinstance(doc, dict):
            raise RequestError(404, f"endpoint {name!r} serves no model", field="endpoint")
        endpoint = Endpoint(name, doc, stamp)
        if not (isinstance(doc.get("current"), dict) or (endpoint.routed and endpoint.served_partitions())):
            raise RequestError(404, f"endpoint {name!r} serves no model", field="endpoint")
        self._docs[name] = endpoint
        return endpoint

    def model(self, name: str, partition: str | None = None) -> LoadedModel:
        """The model ``name`` serves (for ``partition`` of a routed endpoint), loaded once per entry."""
        return self._served(self.read_endpoint(name), partition)

    def _served(self, endpoint: Endpoint, partition: str | None) -> LoadedModel:
        entry = endpoint.entry(partition)
        key = (endpoint.name, partition)
        loaded = self._models.get(key)
        if loaded is not None and loaded.entry == entry:
            return loaded
        with self._lock(key):
            loaded = self._models.get(key)
            if loaded is not None and loaded.entry == entry:
                return loaded  # loaded by the request that held the lock
            what = endpoint.name if partition is None else f"{endpoint.name} partition {partition}"
            try:
                fresh = LoadedModel(entry, self._load(entry))
            except RequestError:
                raise
            except Exception:
                log.exception("scoring: endpoint %s: loading %s failed", what, entry.get("source_uri"))
                raise RequestError(
                    503, f"endpoint {what!r}: its model could not be loaded; see the scoring server's log"
                ) from None
            self._models[key] = fresh
            print(f"endpoint {what}: serving {entry.get('model_name')} v{entry.get('version')}", flush=True)
            return fresh

    def warm(self, name: str) -> None:
        """Load every model ``name`` serves (each partition of a routed endpoint)."""
        endpoint = self.read_endpoint(name)
        partitions: list[str | None] = [*endpoint.served_partitions()] if endpoint.routed else [None]
        for partition in partitions:
            self._served(endpoint, partition)

    @staticmethod
    def _load(entry: dict[str, Any]) -> Any:
        from shared.registry.mlflow_registry import local_model_dir

        try:
            model_dir = local_model_dir(str(entry.get("source_uri") or ""), field="current.source_uri")
        except ValidationError as exc:
            raise RequestError(503, f"the endpoint's model is not servable: {exc.message}") from None
        check_model_is_safe(model_dir)
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(str(model_dir))

    def describe(self, name: str) -> dict[str, Any]:
        endpoint = self.read_endpoint(name)
        if endpoint.routed:
            loaded_parts = {p: m.entry for (ep, p), m in list(self._models.items()) if ep == name and p is not None}
            return {**endpoint.doc, "loaded": loaded_parts}
        loaded = self._models.get((name, None))
        return {**endpoint.doc, "loaded": None if loaded is None else loaded.entry}

    def score(self, name: str, body: Any) -> dict[str, Any]:
        table = parse_scoring_body(body)
        endpoint = self.read_endpoint(name)
        if not endpoint.routed:
            if "partition" in table.params:
                raise RequestError(
                    400,
                    f"endpoint {name!r} serves one model; params.partition is for routed endpoints",
                    field="params.partition",
                )
            loaded = self._served(endpoint, None)
            return {
                "predictions": self._predict(name, loaded, table, range(len(table.rows))),
                "model": loaded.entry.get("model_name"),
                "version": loaded.entry.get("version"),
            }
        served = set(endpoint.served_partitions())
        routes = route_rows(table, endpoint.partition_key, served.__contains__, endpoint.unknown)
        predictions: list[Any] = [None] * len(table.rows)
        models: dict[str, dict[str, Any]] = {}
        groups: dict[str, list[int]] = {}
        for i, partition in enumerate(routes):
            groups.setdefault(partition, []).append(i)
        for partition, indices in groups.items():
            loaded = self._served(endpoint, partition)
            for i, value in zip(indices, self._predict(name, loaded, table, indices), strict=True):
                predictions[i] = value
            models[partition] = {"model": loaded.entry.get("model_name"), "version": loaded.entry.get("version")}
        return {"predictions": predictions, "partitions": routes, "models": models}

    @staticmethod
    def _predict(name: str, loaded: LoadedModel, table: Table, indices: Iterable[int]) -> list[Any]:
        return predict_rows(loaded.model, loaded.columns, table, indices, name)


# ---------------------------------------------------------------- HTTP


class ScoringRoutes:
    """The three routes as framework-neutral handlers ``(method, target, headers, body) -> reply``."""

    def __init__(self, state: ScoringState) -> None:
        self.state = state

    @staticmethod
    def _reply(status: int, doc: Any) -> tuple[int, bytes, dict[str, str]]:
        from shared.api.http import json_response

        resp = json_response(status, doc)
        return resp.status, resp.body, resp.headers

    def _answer(self, fn: Callable[[], Any]) -> tuple[int, bytes, dict[str, str]]:
        from shared.api.http import error_response, map_error

        try:
            return self._reply(200, fn())
        except RequestError as err:
            resp = error_response(err.status, err.code, err.message, err.field)
        except Exception as exc:  # ValidationError from the JSON decoder; anything else: a bare 500
            resp = map_error(exc)
        return resp.status, resp.body, resp.headers

    @staticmethod
    def _name(target: str, index: int) -> str:
        parts = [p for p in target.split("?", 1)[0].split("/") if p]
        return parts[index] if len(parts) > index else ""

    def health(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Any:
        return self._answer(lambda: {"status": "ok", "home": str(self.state.home), "pid": os.getpid()})

    def describe(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Any:
        return self._answer(lambda: self.state.describe(self._name(target, 1)))

    def score(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Any:
        from shared import safejson

        def run() -> Any:
            name = self._name(target, 1)
            self.state.endpoint_file(name)  # an impossible name is a 404 before the body is read
            doc = safejson.loads(body, field="body", limits=safejson.JsonLimits(max_bytes=MAX_BODY))
            return self.state.score(name, doc)

        return self._answer(run)


def scoring_app(state: ScoringState, host: str, port: int, limits: Any) -> Any:
    """The ASGI app: the three routes behind the host's request policy (Host, Origin, JSON)."""
    from starlette.routing import Route

    from shared.api.guard import RequestPolicy
    from shared.web.asgi import Bridge, json_app

    routes = ScoringRoutes(state)
    policy = RequestPolicy.for_address(
        host, port, max_headers=limits.max_headers, max_header_bytes=limits.max_header_bytes
    )
    return json_app(
        [
            Route("/health", Bridge(routes.health, limits), methods=["GET", "HEAD"]),
            Route("/endpoints/{name}", Bridge(routes.describe, limits), methods=["GET", "HEAD"]),
            Route("/endpoints/{name}/score", Bridge(routes.score, limits), methods=["POST"]),
        ],
        [("/", policy)],
    )


def serve(home: Path, host: str, port: int, *, body_timeout: float | None = None) -> None:
    from shared.web.server import HttpLimits, bind, serve_forever

    home = home.resolve()
    state = ScoringState(home)
    state.endpoints_dir.mkdir(parents=True, exist_ok=True)
    limits = HttpLimits(max_body_bytes=MAX_BODY)
    if body_timeout is not None:
        limits = HttpLimits(max_body_bytes=MAX_BODY, body_timeout=body_timeout, read_timeout=body_timeout * 2)
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"scoring server: cannot listen on {host}:{port} ({exc.strerror or exc})", flush=True)
        raise SystemExit(1) from None
    port = sock.getsockname()[1]
    app = scoring_app(state, host, port, limits)
    pid_file = state.endpoints_dir / PID_FILE
    pid_file.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}), encoding="utf-8")
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    def _warm() -> None:
        """Import the heavy modules and load the served models before the first request needs them."""
        try:
            import mlflow.pyfunc  # noqa: F401
            import pandas  # noqa: F401

            for path in sorted(state.endpoints_dir.glob("*.json")):
                if path.name != PID_FILE and ENDPOINT_RE.match(path.stem):
                    try:
                        state.warm(path.stem)
                    except Exception as exc:
                        print(f"endpoint {path.stem}: not loaded at start: {exc}", flush=True)
        except Exception as exc:
            print(f"warm-up failed: {exc}", flush=True)

    threading.Thread(target=_warm, name="warm-up", daemon=True).start()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    print(f"scoring server on http://{host}:{port} (home {home}, pid {os.getpid()})", flush=True)
    try:
        serve_forever(app, sock, limits, stop)
    finally:
        try:
            doc = json.loads(pid_file.read_text(encoding="utf-8"))
            if doc.get("pid") == os.getpid():
                pid_file.unlink()
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Conveyor local scoring endpoint")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5088)
    parser.add_argument("--body-timeout", type=float, default=None, help="seconds a request body may take (30)")
    args = parser.parse_args(argv)
    serve(args.home, args.host, args.port, body_timeout=args.body_timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
