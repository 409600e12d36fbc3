"""JobBackend port and adapters for batch, databricks, azureml, register and deploy steps."""
