"""A batch step's ``resource_files``: the files put into every task's working directory.

Each entry is one of

* a blob URL of the storage account (``https://<acct>.blob.core.windows.net/apps/x.py``);
* ``container/name`` in that account (``apps/batch_app/score_file.py``);
* a file of the project, written ``./path`` (``./samples/batch_app/score_file.py``): the host
  makes it available itself. At launch it is uploaded to the ``apps`` container under a name
  that holds a hash of its content (``project/<sha256>/samples/batch_app/score_file.py``),
  once per content -- so a task always runs the file as it was when its job was launched,
  a changed file is a new blob, and nobody has to upload the app before the first drop (in
  Azure the Functions app does the same from its deployed package).

Both batch backends resolve entries here, so the rules are the same locally and in Azure:
the task sees each file under its base name; URLs of another account, ``..`` and absolute
paths are refused with a ValidationError naming ``params.resource_files[i]``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.backends.commandline import local_file_name, safe_join, safe_relpath
from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.blobs.base import BlobStore

log = logging.getLogger("conveyor.batch")

PROJECT_PREFIX = "./"
STAGE_CONTAINER = "apps"
MAX_PROJECT_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ResourceFile:
    container: str
    name: str
    url: str
    local: str  # the file's name in the task's working directory


def resolve(refs: list[str], blobs: BlobStore, root: Path | None) -> list[ResourceFile]:
    """Every entry as a blob of the account, staging project files first (see the docstring)."""
    out = []
    for i, raw in enumerate(refs):
        fld = f"params.resource_files[{i}]"
        ref = raw.strip()
        if ref.startswith(PROJECT_PREFIX):
            container, name = stage(ref, blobs, root, field=fld)
            url = blobs.url(container, name)
        elif "://" in ref:
            container, name = blobs.parse_url(ref)
            url = ref
        else:
            container, _, name = ref.partition("/")
            if not container or not name:
                raise ValidationError(f"not a blob URL, container/name, or ./project/path: {ref!r}", field=fld)
            url = blobs.url(container, name)
        out.append(ResourceFile(container, name, url, local_file_name(name, field=fld)))
    return out


def stage(ref: str, blobs: BlobStore, root: Path | None, *, field: str) -> tuple[str, str]:
    """Upload the project file ``./path`` (once per content); returns its (container, name)."""
    if root is None:
        raise ValidationError(f"{ref!r} names a project file, but this backend has no project root", field=field)
    rel = ref[len(PROJECT_PREFIX) :]
    path = safe_join(Path(root), rel, field=field)
    if not path.is_file():
        raise ValidationError(f"no such file in the project: {ref!r}", field=field)
    if path.stat().st_size > MAX_PROJECT_FILE_BYTES:
        raise ValidationError(f"{ref!r} is larger than {MAX_PROJECT_FILE_BYTES >> 20} MiB", field=field)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:32]
    name = f"project/{digest}/{safe_relpath(rel, field=field).as_posix()}"
    if blobs.info(STAGE_CONTAINER, name) is None:
        blobs.upload(STAGE_CONTAINER, name, data)
        log.info("staged %s as %s/%s", ref, STAGE_CONTAINER, name)
    return STAGE_CONTAINER, name
