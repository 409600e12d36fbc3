"""Ingest: triggers become runs, created once, started once."""
