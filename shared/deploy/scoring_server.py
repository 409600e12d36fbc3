"""The local scoring endpoint: a small stdlib HTTP server that serves each endpoint's champion.

    python -m shared.deploy.scoring_server --home .conveyor --host 127.0.0.1 --port 5088

Routes:
  GET  /health                      -> {"status": "ok", "home": ..., "pid": ...}
  GET  /endpoints/<name>            -> the endpoint file (current + history) and the loaded version
  POST /endpoints/<name>/score      body {"rows": [{col: value}, ...]} or a bare list of rows
                                    -> {"predictions": [...], "model": name, "version": v}

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
loader code runs on load) are refused unless CONVEYOR_SCORING_ALLOW_PICKLE=true.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENDPOINT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PID_FILE = "scoring-server.json"
MAX_BODY = 16 * 1024 * 1024
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.tree._tree.Tree"})


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
        raise RequestError(500, f"refusing to load a {pyfunc.get('loader_module')!r} model (only mlflow.sklearn)")
    sk = flavors.get("sklearn") or {}
    rel = str(sk.get("pickled_model") or pyfunc.get("model_path") or "")
    data = (model_dir / rel).resolve()
    if not rel or model_dir.resolve() not in data.parents:
        raise RequestError(500, f"model file {rel!r} is not inside the model directory")
    fmt = sk.get("serialization_format", "pickle")
    if fmt == "skops":
        import skops.io

        untrusted = set(skops.io.get_untrusted_types(file=str(data)))
        refused = sorted(untrusted - _trusted_types())
        if refused:
            raise RequestError(500, f"model holds types this server does not trust: {refused}")
    elif not allow_pickle:
        raise RequestError(500, f"refusing a {fmt} model: set CONVEYOR_SCORING_ALLOW_PICKLE=true to trust it")


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
            raise RequestError(404, f"no endpoint {name!r}", field="endpoint")
        return self.endpoints_dir / f"{name}.json"

    def read_endpoint(self, name: str) -> tuple[dict[str, Any], float]:
        path = self.endpoint_file(name)
        try:
            mtime = path.stat().st_mtime_ns / 1e9
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RequestError(404, f"no endpoint {name!r}", field="endpoint") from None
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
            fresh = LoadedModel(entry, self._load(entry), mtime)
            self._models[name] = fresh
            print(f"endpoint {name}: serving {entry.get('model_name')} v{entry.get('version')}", flush=True)
            return fresh

    @staticmethod
    def _load(entry: dict[str, Any]) -> Any:
        from shared.registry.mlflow_registry import local_model_dir

        model_dir = local_model_dir(str(entry.get("source_uri") or ""), field="current.source_uri")
        check_model_is_safe(model_dir)
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(str(model_dir))

    def describe(self, name: str) -> dict[str, Any]:
        doc, _ = self.read_endpoint(name)
        loaded = self._models.get(name)
        return {**doc, "loaded": None if loaded is None else loaded.entry}

    def score(self, name: str, body: Any) -> dict[str, Any]:
        rows = body.get("rows") if isinstance(body, dict) else body
        if isinstance(body, dict) and "rows" not in body:
            raise RequestError(400, "missing 'rows' (a list of {column: value} objects)", field="rows")
        if not isinstance(rows, list) or not rows:
            raise RequestError(400, "must be a non-empty list of {column: value} objects", field="rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RequestError(400, "must be an object of {column: value}", field=f"rows[{i}]")
        loaded = self.model(name)
        import pandas as pd

        frame = pd.DataFrame.from_records(rows)
        if loaded.columns:
            for col, typ, required in loaded.columns:
                for i, row in enumerate(rows):
                    if required and (col not in row or row[col] is None):
                        raise RequestError(400, f"missing column {col!r}", field=f"rows[{i}].{col}")
                if col in frame and typ in ("double", "float", "long", "integer"):
                    for i, value in enumerate(frame[col].tolist()):
                        if isinstance(value, bool) or not isinstance(value, int | float):
                            try:
                                float(value)
                            except (TypeError, ValueError):
                                raise RequestError(
                                    400, f"must be a number, got {value!r}", field=f"rows[{i}].{col}"
                                ) from None
                    frame[col] = pd.to_numeric(frame[col]).astype("float64" if typ in ("double", "float") else "int64")
            frame = frame[[c for c, _, _ in loaded.columns if c in frame]]
        try:
            predictions = loaded.model.predict(frame)
        except Exception as exc:
            raise RequestError(400, f"the model could not score these rows: {exc}", field="rows") from exc
        values = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
        values = [v.tolist() if hasattr(v, "tolist") else v for v in values]
        values = [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
        return {
            "predictions": values,
            "model": loaded.entry.get("model_name"),
            "version": loaded.entry.get("version"),
        }


def make_handler(state: ScoringState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ConveyorScoring/1"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

        def _send(self, status: int, doc: Any) -> None:
            payload = json.dumps(doc).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, err: RequestError) -> None:
            doc: dict[str, Any] = {"error": err.message}
            if err.field:
                doc["field"] = err.field
            self._send(err.status, doc)

        def _parts(self) -> list[str]:
            path = self.path.split("?", 1)[0]
            return [p for p in path.split("/") if p]

        def do_GET(self) -> None:
            parts = self._parts()
            try:
                if parts == ["health"]:
                    self._send(200, {"status": "ok", "home": str(state.home), "pid": os.getpid()})
                elif len(parts) == 2 and parts[0] == "endpoints":
                    self._send(200, state.describe(parts[1]))
                else:
                    raise RequestError(404, f"no route GET {self.path}")
            except RequestError as err:
                self._error(err)
            except Exception as exc:
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

        def do_POST(self) -> None:
            parts = self._parts()
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise RequestError(413, f"body larger than {MAX_BODY} bytes")
                raw = self.rfile.read(length) if length else b""
                if not (len(parts) == 3 and parts[0] == "endpoints" and parts[2] == "score"):
                    raise RequestError(404, f"no route POST {self.path}")
                state.endpoint_file(parts[1])
                try:
                    body = json.loads(raw.decode("utf-8") or "null")
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise RequestError(400, f"body is not valid JSON: {exc}", field="body") from None
                self._send(200, state.score(parts[1], body))
            except RequestError as err:
                self._error(err)
            except Exception as exc:
                from shared.errors import ValidationError

                if isinstance(exc, ValidationError):
                    self._send(500, {"error": str(exc), "field": exc.field})
                else:
                    self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

    return Handler


def serve(home: Path, host: str, port: int) -> None:
    home = home.resolve()
    state = ScoringState(home)
    state.endpoints_dir.mkdir(parents=True, exist_ok=True)
    httpd = ThreadingHTTPServer((host, port), make_handler(state))
    httpd.daemon_threads = True
    pid_file = state.endpoints_dir / PID_FILE
    pid_file.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}), encoding="utf-8")

    def _stop(signum: int, frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

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
    print(f"scoring server on http://{host}:{port} (home {home}, pid {os.getpid()})", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
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
    args = parser.parse_args(argv)
    serve(args.home, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
