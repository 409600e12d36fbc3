"""``conveyor demo``: one data drop, followed to a deployed model and a prediction.

With a fresh data home (``<home>/demo`` by default) the demo starts the local host in this
process (Azurite, HTTP routes, blob watcher, scheduler, queue workers), generates the sample
sales data and drops one CSV into ``landing`` -- the watcher sees it and delivers a real
Event Grid BlobCreated event to the host, which ingests it into a run; the batch app is a
project file the host stages itself, as for any ``conveyor drop`` -- follows the run with
progress bars, prints the summary
(every step with state and duration, the gate decision with both metrics, the model name and
version) and POSTs sample rows to the deployed scoring URL. It always stops what it started
(host, Azurite, scoring server). Exit 0 only when the run succeeded and a prediction came back.

``many=True`` (``conveyor demo --many``) takes the same path with the many-models flow: a file
with many stores into ``landing-stores``, one model per store behind one routed endpoint, and
a row of every store scored through it (shared/demo_many.py).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ConveyorError

if TYPE_CHECKING:
    from rich.console import Console

    from shared.engine.model import Run
    from shared.settings import Settings

FLOW = "retrain"
LANDING = "landing"
TARGET_COLUMNS = ("revenue", "target", "label", "y", "sales")  # never sent to the scoring endpoint
SAMPLE_ROWS = 3


# Called with the finished demo's result and the console URL, before the host stops.
Linger = Callable[["DemoResult", str], None]


@dataclass
class DemoResult:
    ok: bool
    run: Run | None = None
    prediction: list[Any] | None = None
    scoring_url: str | None = None
    model: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    served: dict[str, dict[str, Any]] | None = None  # --many: {partition: {model, version, prediction}}


def demo_settings(base: Settings, name: str = "demo") -> Settings:
    """The demo's settings: its own data home (``<home>/<name>``) and free ports when the defaults are taken."""
    from shared.local.azurite import free_port, port_open

    home = base.home if base.home.name == name else base.home / name
    changes: dict[str, Any] = {"home": home}
    h = base.azurite_host
    storage_ports = (base.azurite_blob_port, base.azurite_queue_port, base.azurite_table_port)
    if any(port_open(h, p) for p in storage_ports):
        # someone's Azurite (or `conveyor up`) is there: the demo keeps to itself
        picked: set[int] = set()
        while len(picked) < 3:
            picked.add(free_port(h))
        blob, queue, table = sorted(picked)
        changes.update(azurite_blob_port=blob, azurite_queue_port=queue, azurite_table_port=table)
    if port_open("127.0.0.1", base.host_port):
        changes["host_port"] = free_port()
    if port_open("127.0.0.1", base.scoring_port):
        changes["scoring_port"] = free_port()
    return base.with_overrides(**changes)


def _fresh_home(settings: Settings) -> None:
    """Remove the demo's previous data home (never the project root or a parent of it)."""
    from shared.deploy.local_endpoint import stop_server

    home = settings.home.resolve()
    root = settings.root.resolve()
    if home == root or home in root.parents or home == Path.home().resolve() or len(home.parts) < 3:
        raise ConveyorError(f"refusing to wipe {home}: not a demo data home", service="demo")
    stop_server(home)  # a scoring server left by an interrupted demo
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)


def _load_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConveyorError(f"cannot load {path}", service="demo")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_data(
    settings: Settings, out_dir: Path, *, rows: int = 300, seed: int = 7, stores: int = 4, name: str | None = None
) -> Path:
    """One sample sales CSV written by samples/data/make_sales.py into ``out_dir``."""
    script = settings.root / "samples" / "data" / "make_sales.py"
    if not script.is_file():
        raise ConveyorError(f"sample data generator not found: {script}", service="demo")
    mod = _load_module(script, "conveyor_make_sales")
    path = Path(mod.make_sales(out_dir / (name or f"sales-{seed:03d}.csv"), rows=rows, seed=seed, stores=stores))
    if not path.is_file():
        raise ConveyorError(f"make_sales.py wrote no CSV at {path}", service="demo")
    return path


def sample_rows(csv_path: Path, n: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The first ``n`` rows of a CSV as feature dicts (numbers parsed, target column dropped)."""
    rows: list[dict[str, Any]] = []
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {}
            if any(v is None or not str(v).strip() for v in raw.values()):
                continue  # a dirty row (blank value): not a useful example
            for k, v in raw.items():
                if k is None or k.strip().lower() in TARGET_COLUMNS:
                    continue
                try:
                    row[k] = float(v) if any(c in v for c in ".eE") else int(v)
                except (TypeError, ValueError):
                    row[k] = v
            rows.append(row)
            if len(rows) >= n:
                break
    return rows


def gold_table(run: Run) -> str | None:
    """The folder of the gold table the run's ETL wrote (its ``result.gold``), if it is there."""
    gold = None
    for step in run.steps:
        result = step.outputs.get("result")
        if isinstance(result, dict) and result.get("gold"):
            gold = str(result["gold"])
    return gold if gold and Path(gold).is_dir() else None


def gold_rows(run: Run, n: int = SAMPLE_ROWS) -> list[dict[str, Any]] | None:
    """The first ``n`` rows of the gold table the run's ETL wrote (the model's own features), target dropped.

    None when the run has no readable gold table (the caller falls back to the CSV).
    """
    gold = gold_table(run)
    if gold is None:
        return None
    try:
        from deltalake import DeltaTable

        frame = DeltaTable(gold).to_pandas()
    except Exception:
        return None
    keep = [c for c in frame.columns if str(c).lower() not in TARGET_COLUMNS]
    rows = frame[keep].dropna().head(n).to_dict(orient="records")
    return [{str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows] or None


def score(url: str, rows: list[dict[str, Any]], timeout: float = 30.0, attempts: int = 10) -> list[Any]:
    """POST ``{"rows": [...]}`` to a scoring URL; returns the predictions (retries while it starts)."""
    preds = post_scoring(url, {"rows": rows}, timeout=timeout, attempts=attempts).get("predictions")
    if not isinstance(preds, list):
        raise ConveyorError(f"scoring answer has no predictions list: {str(preds)[:200]}", service="scoring")
    return preds


def post_scoring(url: str, payload: dict[str, Any], timeout: float = 30.0, attempts: int = 10) -> dict[str, Any]:
    """POST a scoring body to a scoring URL; returns the answer (retries while the server starts)."""
    body = json.dumps(payload).encode("utf-8")
    last = ""
    for attempt in range(attempts):
        req = urllib.request.Request(  # noqa: S310 - the local scoring endpoint we deployed
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                doc = json.loads(resp.read().decode("utf-8"))
            if not isinstance(doc, dict):
                raise ConveyorError(f"scoring answer is not an object: {str(doc)[:200]}", service="scoring")
            return doc
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300].decode('utf-8', 'replace')}"
            if exc.code < 500:
                break
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(min(0.25 * 2**attempt, 2.0))
    raise ConveyorError(f"scoring request to {url} failed: {last}", service="scoring")


def run_demo(
    settings: Settings,
    *,
    fresh: bool = True,
    timeout: float = 600.0,
    out: Console | None = None,
    workers: int = 2,
    many: bool = False,
    stores: int | None = None,
    linger: Linger | None = None,
) -> DemoResult:
    """The demo path; see the module docstring. Never raises for a ConveyorError: it's in the result.

    ``linger(result, console_url)``, when given, runs after the run (and the prediction) and
    before the host stops: the console keeps serving until it returns.
    """
    from shared import demo_many
    from shared.cli import RunFollower, model_of, print_run
    from shared.cli_graph import fanout_progress, print_graph
    from shared.deploy.local_endpoint import stop_server
    from shared.host.runtime import LocalHost
    from shared.terminal import make_console, say

    flow, landing = (demo_many.FLOW, demo_many.LANDING) if many else (FLOW, LANDING)

    out = out or make_console()
    started = time.monotonic()
    result = DemoResult(ok=False)
    host: LocalHost | None = None

    def mark(name: str, since: float) -> None:
        result.timings[name] = round(time.monotonic() - since, 2)

    try:
        if fresh:
            _fresh_home(settings)
        say(out, ("conveyor demo", "bold"), f"  data home {settings.home}")
        t = time.monotonic()
        host = LocalHost(settings, workers=workers)
        host.start()
        assert host.services is not None
        services = host.services
        mark("host_start", t)
        # the containers this demo's flow watches (the host watches every flow's)
        watched = [c for c in (host.watcher.containers if host.watcher else []) if c == landing]
        say(out, f"host running at {host.url}; watching {', '.join(watched)}")
        print_console_url(out, host.url)

        t = time.monotonic()
        data_dir = settings.home / "sample-data"
        if many:
            drop = demo_many.generate_stores_data(settings, data_dir, stores=stores or demo_many.STORES)
        else:
            drop = generate_data(settings, data_dir)
        info = services.blobs.upload_file(landing, drop.name, drop)
        mark("data", t)
        say(out, f"dropped {drop.name} into {landing} ({info.size} bytes, eTag {info.etag})")
        say(out, "waiting for the BlobCreated event and following the run…")

        def ours(run: Run) -> bool:
            blob = run.trigger.blob or {}
            etag = str(blob.get("etag") or "").strip('"')
            return run.flow == flow and blob.get("name") == drop.name and etag in ("", info.etag.strip('"'))

        t = time.monotonic()
        enrich = fanout_progress(services.instances)
        with RunFollower(out) as follower:
            run = host.wait_for_run(ours, timeout=timeout, on_progress=lambda r: follower.update(enrich(r)))
        mark("run", t)
        result.run = run
        out.print()
        print_run(run, out)
        if many:
            print_graph(run, services.flows.flows.get(flow), services.instances.fanouts(run.run_id), out)
        result.model = model_of(run)
        if run.status.value != "succeeded":
            result.error = f"run {run.run_id} {run.status.value}: {run.error or 'see `conveyor show`'}"
            return result
        if many:
            t = time.monotonic()
            demo_many.score_partitions(services, run, result, out)
            mark("score", t)
            return result

        deploy_outputs: dict[str, Any] = {}
        for step in run.steps:
            if step.kind == "deploy":
                deploy_outputs = step.outputs
        url = deploy_outputs.get("scoring_url")
        if not url:
            current = services.deployer.current(str(deploy_outputs.get("endpoint") or FLOW))
            url = current.scoring_url if current else None
        if not url:
            result.error = "the run succeeded but nothing is deployed (gate rejected and no champion?)"
            return result
        result.scoring_url = url
        rows = gold_rows(run) or sample_rows(drop)
        t = time.monotonic()
        preds = score(url, rows)
        mark("score", t)
        result.prediction = preds
        say(out, f"scoring url: {url}")
        say(out, f"rows: {json.dumps(rows)}")
        say(out, f"prediction: {json.dumps(preds)}")
        numeric = bool(preds) and all(isinstance(p, int | float) and not isinstance(p, bool) for p in preds)
        result.ok = numeric
        if not numeric:
            result.error = f"predictions are not numbers: {preds!r}"
        return result
    except ConveyorError as exc:
        result.error = str(exc)
        return result
    except BaseException as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        linger = None  # interrupted: stop at once
        raise
    finally:
        if host is not None:
            if linger is not None:
                from shared.cli import console_url

                linger(result, console_url(host.url))
            host.stop()
        stop_server(settings.home)
        result.seconds = round(time.monotonic() - started, 1)
        if result.ok:
            say(out, ("demo succeeded", "green"), f" in {result.seconds:.0f}s")
        else:
            say(out, ("demo failed", "red"), f" after {result.seconds:.0f}s: {result.error}")
        if result.run is not None:
            say(
                out,
                f"inspect later: CONVEYOR_HOME={settings.home} conveyor show {result.run.run_id[:12]}"
                f"  |  conveyor trace {result.run.run_id[:12]}",
            )


def print_console_url(out: Console, host_url: str) -> None:
    """The web console's URL, printed as soon as the host is up (the run shows there live)."""
    from shared.cli import console_url

    out.print(f"console: {console_url(host_url)}  (the run shows there live)", highlight=False)


def wait_for_enter(out: Console) -> Linger:
    """A ``linger`` for a terminal: keep the console up until the user presses Enter."""

    def linger(result: DemoResult, url: str) -> None:
        where = f"{url}runs/{result.run.run_id}" if result.run is not None else url
        out.print(f"the console stays up at {where} (the model: {url}models); press Enter to stop", highlight=False)
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input()

    return linger
