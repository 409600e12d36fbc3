"""Azure DevOps service hooks: authenticate the call, then read the three event types we start runs on.

Service hooks ("Web Hooks" consumer) can send basic-auth credentials and extra HTTP headers.
Conveyor accepts either:

* basic auth: ``CONVEYOR_DEVOPS_USERNAME`` + ``CONVEYOR_DEVOPS_PASSWORD`` (the hook's
  "Basic authentication username/password" fields), or
* a shared secret header: ``CONVEYOR_DEVOPS_SECRET`` sent in the header named by
  ``CONVEYOR_DEVOPS_SECRET_HEADER`` (default ``X-Conveyor-Secret``; the hook's "HTTP headers"
  field, e.g. ``X-Conveyor-Secret: <secret>``).

With neither configured every call is refused (secure by default). Comparisons use
``hmac.compare_digest``. Error messages never contain the secrets.

Payloads: ``git.push``, ``build.complete`` and ``ms.vss-release.deployment-completed-event``
(https://learn.microsoft.com/azure/devops/service-hooks/events). The top-level ``id`` is the
notification id; retries of one notification carry the same id, so it keys the run id.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import safejson
from shared.errors import AuthError, ValidationError
from shared.flows.model import EVENT_TYPES

GIT_PUSH = "git.push"
BUILD_COMPLETE = "build.complete"
RELEASE_DEPLOYMENT_COMPLETED = "ms.vss-release.deployment-completed-event"
_MAX_ID = 200


# ---------------------------------------------------------------- authentication


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def authenticate(headers: Mapping[str, str] | None, settings: Any) -> str:
    """Check the call's credentials; return the method that passed (``"basic"`` or ``"header"``).

    Raises :class:`shared.errors.AuthError` (HTTP 401) when nothing is configured, when the
    credentials are missing or when they are wrong.
    """
    h = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    username = getattr(settings, "devops_username", None)
    password = getattr(settings, "devops_password", None)
    secret = getattr(settings, "devops_secret", None)
    header_name = (getattr(settings, "devops_secret_header", None) or "X-Conveyor-Secret").lower()

    basic_configured = bool(username) and bool(password)
    if bool(username) != bool(password):
        raise AuthError(
            "Azure DevOps webhook basic auth is half configured: set both CONVEYOR_DEVOPS_USERNAME "
            "and CONVEYOR_DEVOPS_PASSWORD",
            service="devops",
            status=401,
        )
    if not basic_configured and not secret:
        raise AuthError(
            "Azure DevOps webhook authentication is not configured, so every call is refused: set "
            "CONVEYOR_DEVOPS_USERNAME and CONVEYOR_DEVOPS_PASSWORD (the service hook's basic authentication) "
            "or CONVEYOR_DEVOPS_SECRET (sent by the hook in the header named by CONVEYOR_DEVOPS_SECRET_HEADER, "
            "default X-Conveyor-Secret)",
            service="devops",
            status=401,
        )

    if basic_configured:
        auth = h.get("authorization", "").strip()
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "basic" and token.strip():
            try:
                decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
            except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text in the header
                decoded = ""
            user, sep, pwd = decoded.partition(":")
            if sep:
                # Evaluate both comparisons: no early exit that would leak which part differed.
                ok_user = _same(user, str(username))
                ok_pwd = _same(pwd, str(password))
                if ok_user and ok_pwd:
                    return "basic"
    if secret:
        given = h.get(header_name)
        if given is not None and _same(given.strip(), str(secret)):
            return "header"
    raise AuthError("missing or wrong credentials for the Azure DevOps webhook", service="devops", status=401)


# ---------------------------------------------------------------- payloads


@dataclass(frozen=True)
class DevOpsEvent:
    event_type: str
    event_id: str  # the notification's top-level "id"
    repository: str | None = None
    branch: str | None = None  # without refs/heads/
    commit: str | None = None
    build_id: str | None = None
    build_number: str | None = None
    result: str | None = None  # build result / deployment status, e.g. "succeeded"
    release: str | None = None
    environment: str | None = None
    raw_subset: dict[str, Any] = field(default_factory=dict)

    def as_trigger(self) -> dict[str, Any]:
        """The ``trigger.devops`` dict of a run."""
        return {
            "event_type": self.event_type,
            "event_id": self.event_id,
            "repository": self.repository,
            "branch": self.branch,
            "commit": self.commit,
            "build_id": self.build_id,
            "build_number": self.build_number,
            "result": self.result,
            "release": self.release,
            "environment": self.environment,
        }


def short_ref(ref: str | None) -> str | None:
    """``refs/heads/main`` -> ``main``; other refs (tags, pull) are kept whole."""
    if ref is None:
        return None
    return ref[len("refs/heads/") :] if ref.startswith("refs/heads/") else ref


def _obj(parent: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> Mapping[str, Any] | None:
    value = parent.get(key)
    if value is None:
        if required:
            raise ValidationError("is required", field=f"{where}{key}")
        return None
    if not isinstance(value, Mapping):
        raise ValidationError(f"must be a JSON object, got {type(value).__name__}", field=f"{where}{key}")
    return value


def _text(parent: Mapping[str, Any] | None, key: str, where: str, *, required: bool = False) -> str | None:
    """A string field; ids that arrive as numbers are turned into text."""
    if parent is None:
        if required:
            raise ValidationError("is required", field=f"{where}{key}")
        return None
    value = parent.get(key)
    if value is None or value == "":
        if required:
            raise ValidationError("is required", field=f"{where}{key}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(f"must be a string, got {type(value).__name__}", field=f"{where}{key}")
    return str(value)


def _git_push(res: Mapping[str, Any]) -> dict[str, Any]:
    repo = _obj(res, "repository", "resource.")
    repository = _text(repo, "name", "resource.repository.", required=True)
    refs = res.get("refUpdates")
    if not isinstance(refs, list) or not refs:
        raise ValidationError("must be a non-empty list of ref updates", field="resource.refUpdates")
    first = refs[0]
    if not isinstance(first, Mapping):
        raise ValidationError("must be a JSON object", field="resource.refUpdates[0]")
    ref = _text(first, "name", "resource.refUpdates[0].", required=True)
    commit = _text(first, "newObjectId", "resource.refUpdates[0].")
    if commit is None:
        commits = res.get("commits")
        if isinstance(commits, list) and commits and isinstance(commits[0], Mapping):
            commit = _text(commits[0], "commitId", "resource.commits[0].")
    return {"repository": repository, "branch": short_ref(ref), "commit": commit}


def _build_complete(res: Mapping[str, Any]) -> dict[str, Any]:
    build_id = _text(res, "id", "resource.", required=True)
    build_number = _text(res, "buildNumber", "resource.")
    # resourceVersion 2.0 has "result"; the older 1.0 payload puts the outcome in "status".
    result = _text(res, "result", "resource.") or _text(res, "status", "resource.")
    if result is None:
        raise ValidationError("is required (the build's result, e.g. succeeded)", field="resource.result")
    repo = _obj(res, "repository", "resource.", required=False)
    repository = _text(repo, "name", "resource.repository.") or _text(repo, "id", "resource.repository.")
    branch = short_ref(_text(res, "sourceBranch", "resource."))
    commit = _text(res, "sourceVersion", "resource.")
    legacy = _text(res, "sourceGetVersion", "resource.")  # e.g. "LG:refs/heads/master:600c52d2..."
    if legacy and (branch is None or commit is None):
        parts = legacy.split(":")
        if len(parts) >= 3:
            branch = branch or short_ref(parts[1])
            commit = commit or parts[2]
    return {
        "repository": repository,
        "branch": branch,
        "commit": commit,
        "build_id": build_id,
        "build_number": build_number,
        "result": result,
    }


def _primary_artifact(res: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The primary artifact of the release, where the payload carries one."""
    candidates: list[Any] = []
    for holder in (res.get("release"), (res.get("deployment") or {}).get("release")):
        if isinstance(holder, Mapping) and isinstance(holder.get("artifacts"), list):
            candidates.extend(holder["artifacts"])
    artifacts = [a for a in candidates if isinstance(a, Mapping)]
    for a in artifacts:
        if a.get("isPrimary"):
            return a
    return artifacts[0] if artifacts else None


def _ref_value(ref: Any, key: str) -> str | None:
    item = ref.get(key) if isinstance(ref, Mapping) else None
    if not isinstance(item, Mapping):
        return None
    for k in ("name", "id"):
        v = item.get(k)
        if isinstance(v, str | int) and not isinstance(v, bool) and str(v):
            return str(v)
    return None


def _release_deployment(res: Mapping[str, Any]) -> dict[str, Any]:
    env = _obj(res, "environment", "resource.")
    assert env is not None
    environment = _text(env, "name", "resource.environment.", required=True)
    result = _text(env, "status", "resource.environment.", required=True)
    release = None
    for holder in (env.get("release"), res.get("release"), (res.get("deployment") or {}).get("release")):
        if isinstance(holder, Mapping):
            release = _text(holder, "name", "resource.release.")
            if release:
                break
    out: dict[str, Any] = {"environment": environment, "result": result, "release": release}
    artifact = _primary_artifact(res)
    if artifact is not None:
        ref = artifact.get("definitionReference")
        out["repository"] = _ref_value(ref, "repository")
        out["branch"] = short_ref(_ref_value(ref, "branch"))
        out["commit"] = _ref_value(ref, "sourceVersion")
        version = ref.get("version") if isinstance(ref, Mapping) else None
        if isinstance(version, Mapping):
            out["build_id"] = _text(version, "id", "resource.artifact.version.")
            out["build_number"] = _text(version, "name", "resource.artifact.version.")
    return out


_PARSERS = {GIT_PUSH: _git_push, BUILD_COMPLETE: _build_complete, RELEASE_DEPLOYMENT_COMPLETED: _release_deployment}


def parse_devops(body: bytes | bytearray | str | Mapping[str, Any]) -> DevOpsEvent:
    """A service hook body -> :class:`DevOpsEvent`; ValidationError naming the field otherwise."""
    # the strict decoder: size, depth, number length, NaN and lone surrogates are 400s naming the problem
    doc: Any = body if isinstance(body, Mapping) else safejson.loads(body, field="body")
    if not isinstance(doc, Mapping):
        raise ValidationError("expected a JSON object (an Azure DevOps service hook notification)", field="body")
    event_type = doc.get("eventType")
    if not isinstance(event_type, str) or not event_type:
        raise ValidationError("is required", field="eventType")
    if event_type not in _PARSERS:
        raise ValidationError(
            f"unsupported event type {event_type[:100]!r}; supported: {', '.join(EVENT_TYPES)}", field="eventType"
        )
    event_id = _text(doc, "id", "", required=True)
    assert event_id is not None
    if len(event_id) > _MAX_ID:
        raise ValidationError(f"longer than {_MAX_ID} characters", field="id")
    resource = _obj(doc, "resource", "")
    assert resource is not None
    fields = _PARSERS[event_type](resource)
    keep = ("id", "eventType", "publisherId", "notificationId", "subscriptionId", "resourceVersion", "createdDate")
    subset = {k: doc.get(k) for k in keep if doc.get(k) is not None}
    message = doc.get("message")
    if isinstance(message, Mapping) and isinstance(message.get("text"), str):
        subset["message"] = message["text"][:500]
    return DevOpsEvent(event_type=event_type, event_id=event_id, raw_subset=subset, **fields)
