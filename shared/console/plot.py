"""A model's metric over its versions as an SVG line chart, champion and previous marked."""

from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup

from shared.console.svg import clip, el, join, num, svg

W, H, LEFT, RIGHT, TOP, BOTTOM = 640.0, 260.0, 58.0, 16.0, 18.0, 34.0


@dataclass(frozen=True)
class Point:
    version: str
    value: float
    decision: str = ""  # promoted | rejected | ''
    role: str = ""  # champion | previous | ''


def metric_plot(points: list[Point], metric: str) -> Markup:
    pts = [p for p in points if math.isfinite(p.value)]
    if not pts:
        return Markup("")
    lo, hi = min(p.value for p in pts), max(p.value for p in pts)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.1
    lo, hi = lo - pad, hi + pad
    inner_w, inner_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    step = inner_w / max(len(pts) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = LEFT + (i * step if len(pts) > 1 else inner_w / 2)
        return x, TOP + (hi - v) / (hi - lo) * inner_h

    coords = [xy(i, p.value) for i, p in enumerate(pts)]
    parts = [
        el("line", {"class": "frame", "x1": LEFT, "y1": TOP, "x2": LEFT, "y2": TOP + inner_h}),
        el("line", {"class": "frame", "x1": LEFT, "y1": TOP + inner_h, "x2": W - RIGHT, "y2": TOP + inner_h}),
        el("text", {"class": "tick-label", "x": 4.0, "y": TOP + 4}, f"{hi:.4g}"),
        el("text", {"class": "tick-label", "x": 4.0, "y": TOP + inner_h}, f"{lo:.4g}"),
        el("text", {"class": "axis-title", "x": 4.0, "y": TOP + inner_h / 2}, clip(metric, 12)),
    ]
    if len(coords) > 1:
        parts.append(el("polyline", {"class": "series", "points": " ".join(f"{num(x)},{num(y)}" for x, y in coords)}))
    for p, (x, y) in zip(pts, coords, strict=True):
        css = " ".join(c for c in ("point", p.decision, p.role) if c and c.isalpha())
        tip = (
            f"v{p.version}: {metric} = {p.value:.6g}"
            + (f" ({p.decision})" if p.decision else "")
            + (f", {p.role}" if p.role else "")
        )
        parts.append(
            el(
                "g",
                {"class": css, "data-version": p.version},
                el("title", None, tip),
                el("circle", {"cx": x, "cy": y, "r": "7" if p.role == "champion" else "4.5"}),
                el("text", {"class": "tick-label", "x": x - 8, "y": TOP + inner_h + 16}, f"v{clip(p.version, 6)}"),
                el("text", {"class": "role-label", "x": x + 9, "y": y - 8}, p.role) if p.role else None,
            )
        )
    return svg(W, H, f"{metric} over versions", "plot", join(parts))
