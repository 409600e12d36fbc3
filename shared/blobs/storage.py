"""BlobStore on Azure Blob Storage (Azurite locally).

Blob names are data: URLs percent-encode them (spaces, unicode, ``;``, ``$``, ``()``…)
and every name this adapter returns is decoded. ``parse_url`` accepts only URLs of this
account, both Azure (``https://acct.blob.core.windows.net/c/n``) and Azurite path-style
(``http://127.0.0.1:10000/devstoreaccount1/c/n``) -- :class:`shared.blobs.account.BlobAccount`
decides. Names Conveyor reads or writes must pass :func:`shared.blobs.account.name_problem`;
``list_blobs`` lists every blob as it is (a listing refuses nothing: its reader decides).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from shared.azure_errors import error_code, map_azure_error
from shared.blobs.account import BlobAccount, NotThisAccount, is_container_name, name_problem
from shared.blobs.base import BlobInfo, BlobStore, Recipe, StrPath
from shared.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobServiceClient

    from shared.settings import Settings

SERVICE = "blob"


def check_container(container: str, field: str = "container") -> None:
    if not is_container_name(container):
        raise ValidationError(
            f"container name {container!r} must be 3-63 lowercase letters, digits and single hyphens", field=field
        )


def check_name(name: str, field: str = "name") -> None:
    problem = name_problem(name)
    if problem is not None:
        raise ValidationError(f"blob name {problem}", field=field)


def guess_content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class AzureBlobStore(BlobStore):
    def __init__(self, connection_string: str, client: BlobServiceClient | None = None) -> None:
        self._recipe: Recipe | None = (AzureBlobStore, (connection_string,), {}) if client is None else None
        if client is None:
            from azure.storage.blob import BlobServiceClient

            client = BlobServiceClient.from_connection_string(connection_string)
        self._client = client
        self.account_url = client.url.rstrip("/")
        self.account = BlobAccount.parse(self.account_url)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credential: Any = None, client_kwargs: Mapping[str, Any] | None = None
    ) -> AzureBlobStore:
        """Identity-based (``BlobServiceClient(account_url, credential)``) when the settings give a
        blob service URI / account name and no connection string; else the connection string
        (Azurite locally). ``client_kwargs`` go to the SDK client (retry, transport options)."""
        from azure.storage.blob import BlobServiceClient

        from shared.azure_identity import storage_clients

        make = storage_clients(
            settings, "blob", "blobs", BlobServiceClient, credential=credential, client_kwargs=client_kwargs
        )
        store = cls("", make())
        if credential is None and client_kwargs is None:  # the settings say it all: another process can
            store._recipe = (cls.from_settings, (settings,), {})
        return store

    def recipe(self) -> Recipe | None:
        return self._recipe

    # -- helpers -------------------------------------------------------------------------

    def _blob(self, container: str, name: str) -> BlobClient:
        check_container(container)
        check_name(name)
        return self._client.get_blob_client(container, name)

    def _info(self, container: str, name: str, props: Any) -> BlobInfo:
        settings = getattr(props, "content_settings", None)
        modified = props.last_modified or datetime.now(UTC)
        return BlobInfo(
            container=container,
            name=name,
            url=self._url(container, name),  # listed as it is, whatever the name
            etag=str(props.etag),
            size=int(props.size or 0),
            last_modified=modified,
            content_type=getattr(settings, "content_type", None),
        )

    def _create_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._client.create_container(container)
        except ResourceExistsError:
            pass
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def _upload(self, container: str, name: str, data: bytes | IO[bytes], length: int, overwrite: bool) -> BlobInfo:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        blob = self._blob(container, name)
        content_type = guess_content_type(name)
        settings = ContentSettings(content_type=content_type)
        start = data.tell() if not isinstance(data, bytes) else 0
        for attempt in (1, 2):
            try:
                result = blob.upload_blob(data, length=length, overwrite=overwrite, content_settings=settings)
                break
            except ResourceNotFoundError as exc:
                if attempt == 2 or error_code(exc) not in (None, "ContainerNotFound"):
                    raise map_azure_error(exc, SERVICE) from exc
                self._create_container(container)
                if not isinstance(data, bytes):
                    data.seek(start)
            except Exception as exc:
                raise map_azure_error(exc, SERVICE) from exc
        return BlobInfo(
            container=container,
            name=name,
            url=self.url(container, name),
            etag=str(result.get("etag")),
            size=length,
            last_modified=result.get("last_modified") or datetime.now(UTC),
            content_type=content_type,
        )

    # -- BlobStore -------------------------------------------------------------------------

    def upload(self, container: str, name: str, data: bytes, overwrite: bool = True) -> BlobInfo:
        return self._upload(container, name, bytes(data), len(data), overwrite)

    def upload_file(self, container: str, name: str, path: StrPath) -> BlobInfo:
        path = Path(path)
        with path.open("rb") as f:
            return self._upload(container, name, f, path.stat().st_size, overwrite=True)

    def download(self, container: str, name: str) -> bytes:
        blob = self._blob(container, name)
        try:
            return blob.download_blob().readall()
        except Exception as exc:
            raise self._not_found_or_mapped(exc, container, name) from exc

    def download_to(self, container: str, name: str, path: StrPath) -> None:
        blob = self._blob(container, name)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    blob.download_blob().readinto(f)
                except Exception as exc:
                    raise self._not_found_or_mapped(exc, container, name) from exc
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def info(self, container: str, name: str) -> BlobInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._blob(container, name)
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return self._info(container, name, props)

    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        from azure.core.exceptions import ResourceNotFoundError

        check_container(container)
        try:
            items = list(self._client.get_container_client(container).list_blobs(name_starts_with=prefix or None))
        except ResourceNotFoundError:
            return []
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return [self._info(container, p.name, p) for p in items]

    def _url(self, container: str, name: str) -> str:
        return f"{self.account_url}/{container}/{quote(name, safe='/~')}"

    def url(self, container: str, name: str) -> str:
        check_container(container)
        check_name(name)
        return self._url(container, name)

    def parse_url(self, url: str) -> tuple[str, str]:
        if not isinstance(url, str) or not url:
            raise ValidationError("must be a blob URL", field="url")
        try:
            container, name = self.account.split(url)
        except NotThisAccount as exc:
            raise ValidationError(
                f"not a blob URL of this storage account ({self.account_url}): {exc}", field="url"
            ) from None
        except ValueError as exc:
            raise ValidationError(f"malformed blob URL: {exc}", field="url") from None
        check_container(container, field="url")
        check_name(name, field="url")
        return container, name

    def _not_found_or_mapped(self, exc: Exception, container: str, name: str) -> Exception:
        from azure.core.exceptions import ResourceNotFoundError

        if isinstance(exc, ResourceNotFoundError):
            return NotFoundError(f"blob {container}/{name} not found", service=SERVICE, status=404)
        return map_azure_error(exc, SERVICE)
