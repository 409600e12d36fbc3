"""A BlobStore on a local directory, for tests that need blobs but not the Azure wire
(e.g. a host process killed mid-run). Names are stored quoted so any blob name is one file."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

from shared.blobs.base import BlobInfo, BlobStore, Recipe, StrPath
from shared.errors import ConflictError, NotFoundError, ValidationError

PREFIX = "dirblob://"


class DirBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, container: str, name: str) -> Path:
        return self.root / container / quote(name, safe="")

    def _info(self, container: str, name: str) -> BlobInfo:
        st = self._path(container, name).stat()
        return BlobInfo(
            container,
            name,
            self.url(container, name),
            str(st.st_mtime_ns),
            st.st_size,
            datetime.fromtimestamp(st.st_mtime, UTC),
        )

    def upload(self, container: str, name: str, data: bytes, overwrite: bool = True) -> BlobInfo:
        p = self._path(container, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            with p.open("wb" if overwrite else "xb") as f:  # "xb": If-None-Match: * as Blob Storage has it
                f.write(data)
        except FileExistsError as exc:
            raise ConflictError(f"blob {container}/{name} already exists", status=409) from exc
        return self._info(container, name)

    def upload_file(self, container: str, name: str, path: StrPath) -> BlobInfo:
        return self.upload(container, name, Path(path).read_bytes())

    def download(self, container: str, name: str) -> bytes:
        try:
            return self._path(container, name).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"no blob {container}/{name}") from exc

    def download_to(self, container: str, name: str, path: StrPath) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(self._path(container, name), path)
        except FileNotFoundError as exc:
            raise NotFoundError(f"no blob {container}/{name}") from exc

    def info(self, container: str, name: str) -> BlobInfo | None:
        return self._info(container, name) if self._path(container, name).exists() else None

    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        d = self.root / container
        names = sorted(unquote(p.name) for p in d.iterdir()) if d.exists() else []
        return [self._info(container, n) for n in names if n.startswith(prefix)]

    def recipe(self) -> Recipe:
        return (type(self), (self.root,), {})

    def url(self, container: str, name: str) -> str:
        return f"{PREFIX}{container}/{quote(name)}"

    def parse_url(self, url: str) -> tuple[str, str]:
        if not url.startswith(PREFIX) or "/" not in url[len(PREFIX) :]:
            raise ValidationError(f"not a blob URL of this store: {url!r}", field="url")
        container, _, name = url[len(PREFIX) :].partition("/")
        return container, unquote(name)


class SlowDirBlobStore(DirBlobStore):
    """A DirBlobStore whose downloads take ``delay`` seconds: a host can be killed while its
    batch tasks are still being staged."""

    def __init__(self, root: Path, delay: float) -> None:
        super().__init__(root)
        self.delay = delay

    def download_to(self, container: str, name: str, path: StrPath) -> None:
        time.sleep(self.delay)
        super().download_to(container, name, path)

    def recipe(self) -> Recipe:
        return (type(self), (self.root, self.delay), {})
