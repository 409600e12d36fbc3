"""A step for the console's browser tests (run by the local Databricks backend).

``console_step.py ok``: prints a line and succeeds. ``console_step.py needs MARKER``: fails
(exit 3) with HTML on stderr until the file MARKER exists, so a test can fail a run, read the
stderr tail in the console, create MARKER and rerun from this step.
"""

import sys
from pathlib import Path

mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
print(f"console step {mode}: starting", flush=True)
if mode == "needs":
    marker = Path(sys.argv[2])
    if not marker.exists():
        print("console-step: <script>alert(3)</script> <b>bold</b> is text", file=sys.stderr)
        print(f"console-step: marker {marker.name} is missing; failing on purpose", file=sys.stderr)
        sys.exit(3)
print(f"console step {mode}: done", flush=True)
