"""An unresolved Key Vault reference never acts as the secret it stands for."""

from __future__ import annotations

import logging

import pytest

from shared.ingest.devops import authenticate
from shared.settings import Settings

REF = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/conveyor-devops-secret)"


def test_an_unresolved_reference_counts_as_not_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="conveyor.settings"):
        s = Settings.from_env({"CONVEYOR_DEVOPS_SECRET": REF, "CONVEYOR_DATABRICKS_TOKEN": " " + REF})
    assert s.devops_secret is None and s.azure.databricks_token is None
    assert "CONVEYOR_DEVOPS_SECRET is an unresolved Key Vault reference" in caplog.text
    assert "CONVEYOR_DATABRICKS_TOKEN" in caplog.text and "SecretUri" not in caplog.text


def test_the_reference_text_does_not_authenticate_a_hook() -> None:
    s = Settings.from_env({"CONVEYOR_DEVOPS_SECRET": REF})
    from shared.errors import AuthError

    with pytest.raises(AuthError):
        authenticate({s.devops_secret_header: REF}, s)


def test_resolved_values_are_kept() -> None:
    assert Settings.from_env({"CONVEYOR_DEVOPS_SECRET": "s3cret"}).devops_secret == "s3cret"
