"""The BlobStore port: the few blob operations Conveyor needs."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

StrPath = str | os.PathLike[str]  # a local file: Path or plain string (the batch hot path)
# How another process of ours builds an equal store: a picklable callable and its arguments.
Recipe = tuple[Callable[..., "BlobStore"], tuple[Any, ...], dict[str, Any]]


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
    def upload_file(self, container: str, name: str, path: StrPath) -> BlobInfo: ...

    @abstractmethod
    def download(self, container: str, name: str) -> bytes: ...

    @abstractmethod
    def download_to(self, container: str, name: str, path: StrPath) -> None: ...

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

    def recipe(self) -> Recipe | None:
        """How a process of ours (a local Batch node) builds the same store for itself; None
        when it cannot (a store built around an injected client or credential)."""
        return None
