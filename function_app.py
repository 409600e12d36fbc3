"""Azure Functions entry point (Python v2 programming model): builds the app, registers blueprints.

Thin on purpose: every blueprint module imports only ``azure.functions`` at module level and
loads ``shared`` inside its function bodies, so the worker indexes this file fast and no heavy
SDK (Batch, Databricks, Azure ML, MLflow, scikit-learn, pandas) is loaded until a function
needs it. tests/functional/test_cold_start.py measures and guards that.
"""

import azure.functions as func

from functions.blob_events import bp as blob_events_bp
from functions.console import bp as console_bp
from functions.operations import bp as operations_bp
from functions.orchestrator import bp as orchestrator_bp
from functions.schedules import bp as schedules_bp
from functions.webhooks import bp as webhooks_bp

BLUEPRINTS = (blob_events_bp, schedules_bp, webhooks_bp, orchestrator_bp, console_bp, operations_bp)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for _bp in BLUEPRINTS:
    app.register_functions(_bp)
