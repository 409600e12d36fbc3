"""Local stand-ins for Azure services (Azurite) used by `conveyor up`, the demo and tests."""
