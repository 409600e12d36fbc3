"""ModelRegistry port, its MLflow (local) and Azure ML adapters, and the champion gate."""
