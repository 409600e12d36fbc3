"""The BlobStore port: the few blob operations Conveyor needs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class BlobInfo:
    container: str
    name: str
    url: str
    etag: str
    size: int
    last_modified: datetime
    content_type: str | None = None


class BlobStore(ABC):
    @abstractmethod
    def upload(self, container: str, name: str, data: bytes, overwrite: bool = True) -> BlobInfo: ...

    @abstractmethod
    def upload_file(self, container: str, name: str, path: Path) -> BlobInfo: ...

    @abstractmethod
    def download(self, container: str, name: str) -> bytes: ...

    @abstractmethod
    def download_to(self, container: str, name: str, path: Path) -> None: ...

    @abstractmethod
    def info(self, container: str, name: str) -> BlobInfo | None:
        """Properties of a blob, or None when it does not exist."""

    @abstractmethod
    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]: ...

    @abstractmethod
    def url(self, container: str, name: str) -> str: ...

    @abstractmethod
    def parse_url(self, url: str) -> tuple[str, str]:
        """(container, name) of a blob URL of this account; ValidationError otherwise."""
