"""The engine: pure decide() and the executor that applies its commands through the ports."""
