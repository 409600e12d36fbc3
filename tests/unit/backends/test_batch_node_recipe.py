"""A local Batch node builds its own blob store from the host's store's recipe (batch_node).

No network: building an Azure Storage client from a connection string contacts nothing."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from shared.backends.local_batch import LocalBatchBackend
from shared.blobs.storage import AzureBlobStore
from shared.errors import ValidationError
from shared.settings import Settings

CONN = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
)


def _rebuilt(store: AzureBlobStore) -> AzureBlobStore:
    recipe = store.recipe()
    assert recipe is not None
    factory, args, kwargs = pickle.loads(pickle.dumps(recipe))  # our own bytes
    rebuilt = factory(*args, **kwargs)
    assert isinstance(rebuilt, AzureBlobStore)
    return rebuilt


def test_a_store_from_settings_or_a_connection_string_is_rebuilt_equal(tmp_path: Path) -> None:
    settings = Settings(root=tmp_path, home=tmp_path / "home", storage_connection=CONN, fault_rate=0.2)
    from_settings = AzureBlobStore.from_settings(settings)
    assert _rebuilt(from_settings).account_url == from_settings.account_url == "http://127.0.0.1:1/devstoreaccount1"
    # the settings travel whole (fault injection included), not just the connection string
    assert from_settings.recipe()[1][0].fault_rate == 0.2  # type: ignore[index]
    plain = AzureBlobStore(CONN)
    assert _rebuilt(plain).account_url == plain.account_url


def test_a_store_around_an_injected_client_has_no_recipe_and_local_batch_refuses_it(tmp_path: Path) -> None:
    settings = Settings(root=tmp_path, home=tmp_path / "home", storage_connection=CONN)
    injected = AzureBlobStore.from_settings(settings, client_kwargs={"retry_total": 0})
    assert injected.recipe() is None
    with pytest.raises(ValidationError) as err:
        LocalBatchBackend(injected, tmp_path / "home", 1)
    assert err.value.field == "blobs"
