"""The connection to the Kubernetes API and one typed error per kind of failure.

``KubeApi`` owns the application's single ``ApiClient`` (built lazily inside the
event loop from an explicit ``Configuration``, never the library's global default;
closed by ``aclose``) and makes every call for ``receiver.steps.k8s``:
through kubernetes-asyncio's typed API methods, read as raw JSON (or streamed, for
logs), with HTTP errors mapped to typed errors and reads retried (bounded,
jittered) when the failure is transient. Writes are sent once here; the executor
decides whether to send them again after reading the object afresh.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp

from receiver.errors import ConfigError, PermanentStepError, TransientStepError
from receiver.retrying import RetryPolicy, retrying, transient_status
from receiver.settings import KubeSettings, in_cluster_host
from receiver.steps.kube_objects import (
    MESSAGE_CHARS,
    Json,
    cap,
)

T = TypeVar("T")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REFRESH = 60.0  # seconds; client-go re-reads projected tokens as often
LOG_LINE_CHARS = 2000


class KubeNotFoundError(PermanentStepError):
    """The object (or its namespace) does not exist (HTTP 404)."""


class KubeForbiddenError(PermanentStepError):
    """RBAC does not allow the request (HTTP 403)."""


class KubeConflictError(TransientStepError):
    """The object changed since it was read (HTTP 409); read it again first."""


@dataclass(frozen=True)
class KubeConnection:
    """Where the API server is and how to authenticate, from settings."""

    mode: Literal["in-cluster", "kubeconfig", "host"]
    host: str | None = None
    kubeconfig: Path | None = None
    context: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False

    @classmethod
    def from_settings(
        cls, kube: KubeSettings, environ: Mapping[str, str] | None = None
    ) -> KubeConnection:
        """The connection the ``kube`` settings describe.

        Raises:
            ConfigError: the mode lacks what it needs (no host, no in-cluster env).
        """
        mode = kube.mode
        if mode == "off":
            raise ConfigError("kube.mode is off: no Kubernetes connection")
        if mode == "kubeconfig":
            return cls(
                mode="kubeconfig",
                kubeconfig=kube.kubeconfig or Path("~/.kube/config").expanduser(),
                context=kube.context,
            )
        if mode == "in-cluster":
            host = kube.host or in_cluster_host(environ)
            if host is None:
                raise ConfigError(
                    "RECEIVER_KUBE_MODE=in-cluster but KUBERNETES_SERVICE_HOST/PORT "
                    "are not set (not running in a pod?); set RECEIVER_KUBE_HOST or "
                    "use RECEIVER_KUBE_MODE=kubeconfig"
                )
            return cls(
                mode="in-cluster",
                host=host,
                token_file=kube.token_file or SA_DIR / "token",
                ca_file=kube.ca_file or SA_DIR / "ca.crt",
                insecure=kube.insecure,
            )
        if not kube.host:
            raise ConfigError(
                "RECEIVER_KUBE_MODE=host needs RECEIVER_KUBE_HOST (the API URL)"
            )
        return cls(
            mode="host",
            host=kube.host,
            token_file=kube.token_file,
            ca_file=kube.ca_file,
            insecure=kube.insecure,
        )

    def where(self) -> str:
        """The API server, for messages (never a credential)."""
        if self.mode == "kubeconfig":
            path = self.kubeconfig or "~/.kube/config"
            return f"kubeconfig {path} context {self.context or '<current>'}"
        return f"{self.mode} {self.host}"


class TokenFile:
    """A bearer token read from a file and re-read when it may have rotated.

    Kubelet rotates projected service-account tokens in place; like client-go,
    the file is read again at most every minute (and at once after a 401), from
    the client's ``refresh_api_key_hook``, which runs before every request.
    """

    def __init__(
        self, path: Path, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._path = path
        self._monotonic = monotonic
        self._token = ""
        self._next_read = 0.0
        self._configuration: Any = None

    def install(self, configuration: Any) -> None:
        """Read the token and hook the refresh into ``configuration``."""
        self._configuration = configuration
        configuration.api_key_prefix["BearerToken"] = "Bearer"
        configuration.api_key["BearerToken"] = self.read()
        configuration.refresh_api_key_hook = self.refresh

    def read(self) -> str:
        """The token in the file now (errors name the file, never the token)."""
        try:
            token = self._path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PermanentStepError(
                f"cannot read the Kubernetes token file {self._path}: {exc.strerror}"
            ) from exc
        if not token:
            raise PermanentStepError(f"the Kubernetes token file {self._path} is empty")
        self._token = token
        self._next_read = self._monotonic() + TOKEN_REFRESH
        if self._configuration is not None:
            self._configuration.api_key["BearerToken"] = token
        return token

    def refresh(self, configuration: Any) -> None:
        """Re-read the file if the last read is older than the refresh period."""
        del configuration  # the one install() was given
        if self._monotonic() >= self._next_read:
            self.read()

    def expire(self) -> bool:
        """Read the file again now; whether the token in it changed."""
        before = self._token
        return self.read() != before


async def new_api_client(
    conn: KubeConnection, monotonic: Callable[[], float] = time.monotonic
) -> tuple[Any, TokenFile | None]:
    """An ``ApiClient`` for ``conn`` on its own ``Configuration``, and its token.

    Raises:
        PermanentStepError: the kubeconfig or token cannot be loaded.
    """
    # kubernetes-asyncio is imported when the first client is built, not with
    # this module: loading it (every model of the API) took a third of a second
    # of each receiver process's start, worker and edge alike, and a receiver
    # whose rules run no k8s step never needs it.
    from kubernetes_asyncio.client import ApiClient, Configuration  # noqa: PLC0415
    from kubernetes_asyncio.config import load_kube_config  # noqa: PLC0415
    from kubernetes_asyncio.config.config_exception import (  # noqa: PLC0415
        ConfigException,
    )

    configuration = Configuration()
    token: TokenFile | None = None
    if conn.mode == "kubeconfig":
        path = conn.kubeconfig
        try:
            await load_kube_config(
                config_file=str(path),
                context=conn.context,
                client_configuration=configuration,
                persist_config=False,
            )
        except (ConfigException, OSError) as exc:
            raise PermanentStepError(
                f"cannot load kubeconfig {path}: {str(exc)[:MESSAGE_CHARS]}"
            ) from exc
    else:
        configuration.host = (conn.host or "").rstrip("/")
        if conn.ca_file is not None:
            configuration.ssl_ca_cert = str(conn.ca_file)
        if conn.insecure:
            configuration.verify_ssl = False
        if conn.token_file is not None:
            token = TokenFile(conn.token_file, monotonic)
            token.install(configuration)
    return ApiClient(configuration=configuration), token


ClientFactory = Callable[[], Awaitable[tuple[Any, TokenFile | None]]]


@dataclass
class LogTail:
    """The newest lines of one log that fit the caps (and match the filter)."""

    lines: deque[str] = field(default_factory=deque)
    kept_bytes: int = 0
    read_lines: int = 0
    matched: int = 0
    dropped: int = 0

    def add(self, raw: bytes, grep: Any, max_bytes: int) -> None:
        """Take one line; drop the oldest kept lines beyond ``max_bytes``."""
        self.read_lines += 1
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if grep is not None and not grep.search(line):
            return
        self.matched += 1
        if len(line) > LOG_LINE_CHARS:
            line = line[:LOG_LINE_CHARS] + "…"
        self.lines.append(line)
        self.kept_bytes += len(line.encode()) + 1
        while self.kept_bytes > max_bytes and len(self.lines) > 1:
            self.kept_bytes -= len(self.lines.popleft().encode()) + 1
            self.dropped += 1


async def read_log(
    response: aiohttp.ClientResponse, grep: Any, max_bytes: int
) -> LogTail:
    """Stream a log body, keeping only the newest matching lines within the cap."""
    tail = LogTail()
    pending = b""
    async for chunk in response.content.iter_chunked(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            tail.add(raw, grep, max_bytes)
        if len(pending) > max_bytes:  # one enormous line: keep its end
            pending = pending[-max_bytes:]
    if pending:
        tail.add(pending, grep, max_bytes)
    return tail


def retryable(exc: BaseException) -> bool:
    """Transient errors, except a conflict: that needs a fresh read first."""
    return isinstance(exc, TransientStepError) and not isinstance(
        exc, KubeConflictError
    )


async def read_json(response: aiohttp.ClientResponse) -> Any:
    """The decoded JSON body of a response.

    Raises:
        PermanentStepError: the body is not JSON.
    """
    try:
        return json.loads(await response.read())
    except ValueError as exc:
        raise PermanentStepError(
            "the API answered with a body that is not JSON"
        ) from exc


def api_error(
    status: int, body: bytes, what: str
) -> TransientStepError | PermanentStepError:
    """The typed error for an API answer ``status`` to ``what``."""
    try:
        message = json.loads(body).get("message") or ""
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")
    detail = f"{what}: HTTP {status}" + (f": {cap(message)}" if message else "")
    if status == 404:
        return KubeNotFoundError(detail)
    if status == 409:
        return KubeConflictError(detail)
    if transient_status(status):
        return TransientStepError(detail)
    if status == 403:
        return KubeForbiddenError(
            f"{detail} (the receiver's RBAC does not allow it; see "
            "docs/deployment.md, Kubernetes RBAC per step)"
        )
    return PermanentStepError(detail)


class KubeApi:
    """One lazily built ApiClient and the calls made through it."""

    def __init__(
        self,
        factory: ClientFactory,
        *,
        request_timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self._factory = factory
        self._timeout = request_timeout
        self._attempts = attempts
        self.policy = RetryPolicy(attempts=attempts, multiplier=backoff, on=retryable)
        self._api: Any = None
        self._token: TokenFile | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Close the ApiClient (and its connection pool) if it was built."""
        async with self._lock:
            if self._api is not None:
                await self._api.close()
                self._api = None

    async def _client(self) -> Any:
        async with self._lock:
            if self._api is None:
                self._api, self._token = await self._factory()
            return self._api

    async def core(self) -> Any:
        """The core/v1 API."""
        from kubernetes_asyncio.client import CoreV1Api  # noqa: PLC0415

        return CoreV1Api(await self._client())

    async def apps(self) -> Any:
        """The apps/v1 API."""
        from kubernetes_asyncio.client import AppsV1Api  # noqa: PLC0415

        return AppsV1Api(await self._client())

    async def autoscaling(self) -> Any:
        """The autoscaling/v2 API."""
        from kubernetes_asyncio.client import AutoscalingV2Api  # noqa: PLC0415

        return AutoscalingV2Api(await self._client())

    async def _once(
        self,
        what: str,
        call: Callable[..., Awaitable[Any]],
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> T:
        from kubernetes_asyncio.client.exceptions import (  # noqa: PLC0415
            ApiException,
            ApiTypeError,
            ApiValueError,
        )

        try:
            response = await call(
                *args,
                _preload_content=False,
                _request_timeout=self._timeout,
                **kwargs,
            )
            async with response:
                if response.status >= 400:
                    body = await response.content.read(8192)
                    if response.status == 401:
                        raise self._unauthorized(what)
                    raise api_error(response.status, body, what)
                return await read(response)
        except TimeoutError as exc:
            raise TransientStepError(
                f"{what}: timed out after {self._timeout:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransientStepError(
                f"{what}: {exc.__class__.__name__}: {cap(exc)}"
            ) from exc
        except (ApiException, ApiTypeError, ApiValueError) as exc:
            # The client refused to build the request (bad argument, no body).
            raise PermanentStepError(f"{what}: {cap(exc)}") from exc

    def _unauthorized(self, what: str) -> TransientStepError | PermanentStepError:
        detail = f"{what}: HTTP 401: the API server rejected the receiver's credentials"
        if self._token is not None and self._token.expire():
            return TransientStepError(f"{detail}; the token file changed, retrying")
        return PermanentStepError(detail)

    async def request(
        self,
        what: str,
        call: Callable[..., Awaitable[Any]],
        *args: Any,
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        retry: bool = True,
        **kwargs: Any,
    ) -> T:
        """One API call; reads retry transient failures, writes never do here."""
        try:
            policy = self.policy if retry else replace(self.policy, attempts=1)
            async for attempt in retrying(policy):
                with attempt:
                    result = await self._once(what, call, read, args, kwargs)
        except KubeConflictError:
            raise
        except TransientStepError as exc:
            if not retry:
                raise
            raise TransientStepError(
                f"{exc} (gave up after {self._attempts} attempts)"
            ) from exc
        return result

    async def json(
        self,
        what: str,
        call: Callable[..., Awaitable[Any]],
        *args: Any,
        retry: bool = True,
        **kwargs: Any,
    ) -> Json:
        """One API call answered with a JSON object."""
        found = await self.request(
            what, call, *args, read=read_json, retry=retry, **kwargs
        )
        if not isinstance(found, dict):
            raise PermanentStepError(f"{what}: the API answered with no JSON object")
        return found
