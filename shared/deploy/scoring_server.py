"""The local scoring endpoint: serves each endpoint's champion over HTTP (Hypercorn, shared/web).

    python -m shared.deploy.scoring_server --home .conveyor --host 127.0.0.1 --port 5088

Routes:
  GET  /health                      -> {"status": "ok", "home": ..., "pid": ...}
  GET  /endpoints/<name>            -> the endpoint file (current + history) and the loaded version
  POST /endpoints/<name>/score      -> {"predictions": [...], "model": name, "version": v}

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

The endpoint files (``<home>/endpoints/<name>.json``) are written by LocalScoringDeployer.
Every request compares the file's mtime with the loaded one and reloads under a per-endpoint
lock, so a promotion swaps the model without restarting the server.

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
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ValidationError

ENDPOINT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PID_FILE = "scoring-server.json"
MAX_BODY = 16 * 1024 * 1024
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.tree._tree.Tree"})
PROTOCOL_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs", "rows")
# long/integer columns go to int64/int32: larger magnitudes would overflow in the cast
INT_BOUNDS = {"long": 2**63, "integer": 2**31}
NUMERIC_TYPES = ("double", "float", "long", "integer")

log = logging.getLogger("conveyor.scoring")

_CODES = {400: "validation_error", 404: "not_found", 503: "model_unavailable"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


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
    def __init__(self, entry: dict[str, Any], model: Any, mtime: float) -> None:
        self.entry = entry
        self.model = model
        self.mtime = mtime
        self.columns: list[tuple[str, str, bool]] = []  # (name, type, required)
        schema = None
        try:
            schema = model.metadata.get_input_schema()
        except Exception:
            schema = None
        if schema is not None and getattr(schema, "has_input_names", lambda: False)():
            for spec in schema.inputs:
                typ = getattr(spec, "type", None)
                self.columns.append((spec.name, str(getattr(typ, "name", typ)), bool(getattr(spec, "required", True))))


@dataclass
class Table:
    """Rows of ``{column: value}`` from one scoring body, and how to name a cell of it in an error."""

    rows: list[dict[str, Any]]
    cell: Callable[[int, str], str]  # field of row i, column c
    missing: Callable[[int, str], str]  # field to name when row i lacks column c


def _records(value: Any, key: str) -> Table:
    if not isinstance(value, list) or not value:
        raise RequestError(400, "must be a non-empty list of {column: value} objects", field=key)
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise RequestError(400, "must be an object of {column: value}", field=f"{key}[{i}]")
    return Table(value, lambda i, c: f"{key}[{i}].{c}", lambda i, c: f"{key}[{i}].{c}")


def _split(value: Any) -> Table:
    key = "dataframe_split"
    if not isinstance(value, dict):
        raise RequestError(400, 'must be an object {"columns": [...], "data": [[...]]}', field=key)
    for extra in sorted(set(value) - {"columns", "data", "index"}):
        raise RequestError(400, "unknown field; expected columns, data and optionally index", field=f"{key}.{extra}")
    columns, data = value.get("columns"), value.get("data")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise RequestError(400, "must be a non-empty list of column names", field=f"{key}.columns")
    if len(set(columns)) != len(columns):
        raise RequestError(400, "column names must be unique", field=f"{key}.columns")
    if not isinstance(data, list) or not data:
        raise RequestError(400, "must be a non-empty list of rows (lists of values)", field=f"{key}.data")
    index = value.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        raise RequestError(400, "must be a list with one entry per row of data", field=f"{key}.index")
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(
                400, f"must be a list of {len(columns)} values (one per column)", field=f"{key}.data[{i}]"
            )
        rows.append(dict(zip(columns, row, strict=True)))
    position = {c: j for j, c in enumerate(columns)}
    return Table(rows, lambda i, c: f"{key}.data[{i}][{position[c]}]", lambda i, c: f"{key}.columns")


def _columns(value: dict[str, Any]) -> Table:
    key = "inputs"
    if not value:
        raise RequestError(400, "must name at least one column", field=key)
    lengths = set()
    for col, values in value.items():
        if not isinstance(values, list) or not values:
            raise RequestError(400, "must be a non-empty list of values (one per row)", field=f"{key}.{col}")
        lengths.add(len(values))
    if len(lengths) != 1:
        raise RequestError(400, "every column must have the same number of values", field=key)
    n = lengths.pop()
    rows = [{col: values[i] for col, values in value.items()} for i in range(n)]
    return Table(rows, lambda i, c: f"{key}.{c}[{i}]", lambda i, c: f"{key}.{c}")


def parse_scoring_body(body: Any) -> Table:
    """The rows of a scoring body in any accepted format (see the module docstring)."""
    if isinstance(body, list):
        return _records(body, "rows")  # Conveyor's bare list of rows
    accepted = ", ".join(PROTOCOL_KEYS)
    if not isinstance(body, dict):
        raise RequestError(400, f"must be a JSON object with one of {accepted}", field="body")
    for extra in sorted(set(body) - {*PROTOCOL_KEYS, "params"}):
        raise RequestError(
            400, f"unknown field; expected one of {accepted} (and optionally params)", field=extra or '""'
        )
    keys = [k for k in PROTOCOL_KEYS if k in body]
    if len(keys) != 1:
        raise RequestError(400, f"needs exactly one of {accepted}", field="body")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise RequestError(400, "must be an object", field="params")
    key = keys[0]
    value = body[key]
    if key == "dataframe_split":
        return _split(value)
    if key == "inputs" and isinstance(value, dict):
        return _columns(value)
    return _records(value, key)


def _number(value: Any, typ: str, field: str) -> float | int:
    """A finite number for a numeric column (integral and in range for long/integer)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(400, f"must be a number, got {_show(value)}", field=field)
    try:
        number = float(value) if not isinstance(value, int) else value
    except ValueError:
        raise RequestError(400, f"must be a number, got {_show(value)}", field=field) from None
    if isinstance(number, float) and not math.isfinite(number):
        raise RequestError(400, f"must be a finite number, got {_show(value)}", field=field)
    bound = INT_BOUNDS.get(typ)
    if bound is not None:
        if isinstance(number, float):
            if not number.is_integer():
                raise RequestError(400, f"must be an integer, got {_show(value)}", field=field)
            number = int(number)
        if not -bound <= number < bound:
            raise RequestError(400, f"out of range for a {typ} column", field=field)
    elif abs(number) > 1.7e308:
        raise RequestError(400, "out of range for a double column", field=field)
    return number


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


class ScoringState:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.endpoints_dir = home / "endpoints"
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def endpoint_file(self, name: str) -> Path:
        if not ENDPOINT_RE.match(name):
            raise RequestError(404, f"no endpoint {name[:64]!r}", field="endpoint")
        return self.endpoints_dir / f"{name}.json"

    def read_endpoint(self, name: str) -> tuple[dict[str, Any], float]:
        path = self.endpoint_file(name)
        try:
            mtime = path.stat().st_mtime_ns / 1e9
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RequestError(404, f"no endpoint {name!r}", field="endpoint") from None
        except (OSError, ValueError):
            log.exception("scoring: cannot read the endpoint file %s", path)
            raise RequestError(503, f"endpoint {name!r} cannot be read; see the scoring server's log") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("current"), dict):
            raise RequestError(404, f"endpoint {name!r} serves no model", field="endpoint")
        return doc, mtime

    def model(self, name: str) -> LoadedModel:
        doc, mtime = self.read_endpoint(name)
        loaded = self._models.get(name)
        if loaded is not None and loaded.mtime == mtime and loaded.entry == doc["current"]:
            return loaded
        with self._lock(name):
            doc, mtime = self.read_endpoint(name)
            loaded = self._models.get(name)
            if loaded is not None and loaded.mtime == mtime and loaded.entry == doc["current"]:
                return loaded
            entry = doc["current"]
            if loaded is not None and loaded.entry == entry:
                loaded.mtime = mtime  # rewritten with the same model: no reload
                return loaded
            try:
                fresh = LoadedModel(entry, self._load(entry), mtime)
            except RequestError:
                raise
            except Exception:
                log.exception("scoring: endpoint %s: loading %s failed", name, entry.get("source_uri"))
                raise RequestError(
                    503, f"endpoint {name!r}: its model could not be loaded; see the scoring server's log"
                ) from None
            self._models[name] = fresh
            print(f"endpoint {name}: serving {entry.get('model_name')} v{entry.get('version')}", flush=True)
            return fresh

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
        doc, _ = self.read_endpoint(name)
        loaded = self._models.get(name)
        return {**doc, "loaded": None if loaded is None else loaded.entry}

    def score(self, name: str, body: Any) -> dict[str, Any]:
        table = parse_scoring_body(body)
        rows = table.rows
        loaded = self.model(name)
        import pandas as pd

        if loaded.columns:
            for col, typ, required in loaded.columns:
                for i, row in enumerate(rows):
                    if required and (col not in row or row[col] is None):
                        raise RequestError(400, f"missing column {col!r}", field=table.missing(i, col))
                    if col in row and row[col] is not None and typ in NUMERIC_TYPES:
                        row[col] = _number(row[col], typ, table.cell(i, col))
        try:
            frame = pd.DataFrame.from_records(rows)
            if loaded.columns:
                for col, typ, _ in loaded.columns:
                    if col in frame and typ in NUMERIC_TYPES:
                        frame[col] = pd.to_numeric(frame[col]).astype(
                            "float64" if typ in ("double", "float") else "int64"
                        )
                frame = frame[[c for c, _, _ in loaded.columns if c in frame]]
            predictions = loaded.model.predict(frame)
        except Exception:
            log.warning("scoring: endpoint %s: predict failed", name, exc_info=True)
            raise RequestError(
                400, "the model could not score these rows (check the column names and types)", field="body"
            ) from None
        values = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
        values = [v.tolist() if hasattr(v, "tolist") else v for v in values]
        values = [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
        return {
            "predictions": values,
            "model": loaded.entry.get("model_name"),
            "version": loaded.entry.get("version"),
        }


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
            resp = error_response(err.status, _CODES.get(err.status, "error"), err.message, err.field)
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
                        state.model(path.stem)
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
