"""Conveyor: the application behind the Azure Functions app.

Everything here is importable without ``azure.functions``; heavy SDKs are imported lazily
inside adapters so that ``import function_app`` stays light.
"""

__version__ = "0.1.0"
