"""Which URLs address blobs of the configured storage account, and which blob names Conveyor acts on.

:class:`BlobAccount` is the account's blob endpoint -- Azure host style
``https://acct.blob.core.windows.net`` or Azurite path style
``http://127.0.0.1:10000/devstoreaccount1`` -- and decides whether a URL is one of its blobs
(scheme, host, port and base path; the loopback names count as one host). The blob adapter's
``parse_url`` and the Event Grid parser (``data.url`` of a BlobCreated event) share it, so a
URL ingest accepts is exactly a URL the steps can read.

:func:`name_problem` is the one rule for blob names that come from outside (events, listings,
URLs): ``..``/``.`` path segments, backslashes, a leading ``/``, control characters (C0, DEL,
C1: newline, NUL, escape...) and lone surrogates are refused, also when they only appear
after percent-decoding (``%2e%2e/``, ``%5c``, ``%0a``; decoded until nothing changes), since
some consumer along the way may decode once more. Everything else -- spaces, unicode, ``;``,
``$()``, quotes -- is a legal name and stays data.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from shared.settings import Settings

MAX_NAME = 1024  # Azure's limit on a blob name
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_PORT = {"http": 80, "https": 443}
_MAX_DECODES = 4  # %25-nesting deeper than this is refused outright
_CONTAINER_RE = re.compile(r"^(?:\$root|\$web|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")


class NotThisAccount(ValueError):
    """A URL that is not a blob URL of the account; the message says what differs."""


@dataclass(frozen=True)
class BlobAccount:
    """A storage account's blob endpoint, split for comparison."""

    url: str  # the endpoint as configured, without a trailing "/"
    scheme: str
    host: str
    port: int
    base_path: str  # "/devstoreaccount1" on Azurite, "" on Azure

    @classmethod
    def parse(cls, endpoint: str) -> BlobAccount:
        parts = urlsplit(endpoint.strip().rstrip("/"))
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORT or not parts.hostname:
            raise ValueError(f"not an http(s) blob endpoint: {endpoint!r}")
        return cls(
            url=endpoint.strip().rstrip("/"),
            scheme=scheme,
            host=parts.hostname.lower(),
            port=parts.port or _DEFAULT_PORT[scheme],
            base_path=parts.path.rstrip("/"),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobAccount:
        """The account the blob adapter of ``settings`` talks to (connection string or identity URI)."""
        from shared.azure_identity import storage_target

        target = storage_target(settings, "blob", "blobs")
        if target.endpoint is not None:
            return cls.parse(target.endpoint)
        return _from_connection_string(target.connection_string or settings.connection_string)

    def path_of(self, url: str) -> str:
        """The raw (still percent-encoded) ``<container>/<name>`` of a URL of this account.

        Raises NotThisAccount (another scheme, host, port or account) or ValueError (not a URL).
        """
        parts = urlsplit(url.strip())
        port = parts.port  # ValueError for a malformed port
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if scheme not in _DEFAULT_PORT or not host:
            raise ValueError("not an http(s) URL")
        if scheme != self.scheme:
            raise NotThisAccount(f"scheme {scheme} is not the account's {self.scheme}")
        if not (host == self.host or (host in _LOOPBACK and self.host in _LOOPBACK)):
            raise NotThisAccount("another host than the account's")
        if (port or _DEFAULT_PORT[scheme]) != self.port:
            raise NotThisAccount("another port than the account's")
        if not parts.path.startswith(self.base_path + "/"):
            raise NotThisAccount("another account's path")
        return parts.path[len(self.base_path) + 1 :]

    def split(self, url: str) -> tuple[str, str]:
        """(container, name) of a URL of this account, percent-decoded; ValueError otherwise."""
        container, sep, raw_name = self.path_of(url).partition("/")
        if not sep or not raw_name:
            raise ValueError("URL names no blob (expected .../<container>/<blob name>)")
        return unquote(container), unquote(raw_name)


@lru_cache(maxsize=8)
def _from_connection_string(conn: str) -> BlobAccount:
    # The SDK reads every connection-string form (BlobEndpoint=, EndpointSuffix=, Azurite's);
    # building a client makes no request.
    from azure.storage.blob import BlobServiceClient

    return BlobAccount.parse(BlobServiceClient.from_connection_string(conn).url)


def is_container_name(container: str) -> bool:
    """3-63 lower-case letters, digits and single hyphens (or ``$root`` / ``$web``)."""
    return isinstance(container, str) and _CONTAINER_RE.match(container) is not None


def _problem_in(text: str) -> str | None:
    for ch in text:
        if unicodedata.category(ch) == "Cc":
            return f"contains the control character U+{ord(ch):04X}"
    if "\\" in text:
        return "contains a backslash"
    if text.startswith("/"):
        return "starts with '/'"
    for segment in text.split("/"):
        if segment in ("..", "."):
            return f"has a {segment!r} path segment"
    return None


def name_problem(name: str) -> str | None:
    """Why Conveyor refuses to act on a blob named ``name``, or None for a name it accepts."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        return "contains a lone UTF-16 surrogate"
    text = name
    for decodes in range(_MAX_DECODES + 1):
        problem = _problem_in(text)
        if problem is not None:
            return problem if decodes == 0 else f"once percent-decoded, {problem}"
        decoded = unquote(text)
        if decoded == text:
            return None
        text = decoded
    return f"is percent-encoded more than {_MAX_DECODES} times over"
