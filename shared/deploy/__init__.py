"""Deployer port and its adapters: a local scoring endpoint; Azure ML online endpoints."""
