"""Redis clients for sync: the one factory, the two URL spellings, redaction, and outage translation.

There is no module-level client (CONTRIBUTING.md): callers build one with ``make_redis`` and pass it down.

Invariants:
    * Clients decode responses to ``str`` and do not retry with backoff on their own: redis-py's default
      (10 retries, exponential backoff) would hold a WebDAV read for seconds while Redis is down. A failed
      call fails after at most ``(retries + 1) * (connect_timeout + socket_timeout)``.
    * A URL that reaches a log line or an error message has gone through ``redact_url`` first.
    * Celery and redis-py spell a Unix socket differently (``redis+socket:///path`` vs ``unix:///path``);
      ``to_redis_url`` and ``to_celery_url`` convert, so one setting (``SYNC_BROKER_URL``) serves both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.settings import SettingsError
from sync_format.errors import BrokerUnavailable

#: Producer (mountd) timeout per Redis round trip, in seconds: the longest a stale read can be held.
PRODUCER_SOCKET_TIMEOUT = 0.5
#: Producer connect timeout, in seconds.
PRODUCER_CONNECT_TIMEOUT = 0.5
#: Timeout of workers and the CLI per Redis round trip, in seconds (what held up in the Celery notes).
SERVICE_SOCKET_TIMEOUT = 5.0
#: Connect timeout of workers and the CLI, in seconds.
SERVICE_CONNECT_TIMEOUT = 5.0

#: Pooled connections per client: mountd's request threads share them, waiting briefly when all are busy.
DEFAULT_MAX_CONNECTIONS = 100

#: Exceptions that mean "Redis (or the broker on it) cannot serve us right now", from redis-py, kombu and
#: the socket layer underneath both. A read-only replica and a Redis out of memory refuse writes until an
#: operator acts, which for sync is the same as being down.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    OperationalError,
    TimeoutError,
)

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_CELERY_SOCKET_SCHEME = "redis+socket"
_SECRET_QUERY_KEYS = frozenset({"password"})


def make_redis(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    retries: int = 0,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> redis.Redis:
    """Build a Redis client for ``url``.

    The pool blocks instead of failing when all its connections are in use (redis-py's default pool raises
    "Too many connections", which a burst of reads would see as an outage), but only for ``socket_timeout``.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://`` or Celery's ``redis+socket://``.
        socket_timeout: Seconds a command may wait for its reply, and for a free pooled connection.
        connect_timeout: Seconds a connection attempt may take.
        retries: Immediate retries of a command that failed on the connection (0: fail at once).
        max_connections: Bound on pooled connections.

    Returns:
        The client (connections are opened lazily, so this does not touch the network).

    Raises:
        SettingsError: The URL is not a Redis URL.
    """
    pool = redis.BlockingConnectionPool.from_url(
        to_redis_url(url),
        max_connections=max_connections,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), retries),
        decode_responses=True,
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def to_redis_url(url: str) -> str:
    """The redis-py spelling of a broker URL.

    Args:
        url: A Redis URL in either spelling.

    Returns:
        ``unix:///path`` for ``redis+socket:///path``; other Redis URLs unchanged.

    Raises:
        SettingsError: The URL is not a Redis URL.
    """
    scheme = urlsplit(url).scheme
    if scheme == _CELERY_SOCKET_SCHEME:
        return "unix" + url[len(scheme) :]
    if scheme in _REDIS_SCHEMES:
        return url
    raise SettingsError(f"broker URL {redact_url(url)!r} is not a Redis URL (redis://, rediss://, unix://)")


def to_celery_url(url: str) -> str:
    """The Celery (kombu) spelling of a broker URL.

    Args:
        url: A Redis URL in either spelling.

    Returns:
        ``redis+socket:///path`` for ``unix:///path``; other Redis URLs unchanged.

    Raises:
        SettingsError: The URL is not a Redis URL.
    """
    scheme = urlsplit(url).scheme
    if scheme == "unix":
        return _CELERY_SOCKET_SCHEME + url[len(scheme) :]
    if scheme in (*_REDIS_SCHEMES, _CELERY_SOCKET_SCHEME):
        return url
    raise SettingsError(f"broker URL {redact_url(url)!r} is not a Redis URL (redis://, rediss://, unix://)")


def redact_url(url: str) -> str:
    """``url`` without its password (userinfo and ``password=`` query values become ``***``).

    Args:
        url: Any URL.

    Returns:
        The URL safe to log; a string that does not parse as a URL is replaced by ``<unparsable url>``.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        name = user.partition(":")[0]
        netloc = f"{name}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*/")
    if netloc == parts.netloc and query == parts.query:
        return url
    # Rebuilt by hand: urlunsplit drops the empty authority of ``unix:///path``.
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}"
    return rebuilt + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def client_location(client: redis.Redis) -> str:
    """Where ``client`` connects, as a URL without credentials (for logs and errors).

    Args:
        client: A client built by ``make_redis``.

    Returns:
        ``unix:///path`` or ``redis://host:port/db``.
    """
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def unavailable(exc: BaseException, location: str, action: str) -> BrokerUnavailable:
    """Translate an outage of Redis (or of Celery's connection to it) into our error.

    Args:
        exc: The foreign error (one of ``UNAVAILABLE_ERRORS``).
        location: The URL or ``client_location`` that was used (redacted here).
        action: What was being done (``claim``, ``send``, ``read status``...).

    Returns:
        The ``BrokerUnavailable`` to raise ``from exc``.
    """
    safe = redact_url(location)
    return BrokerUnavailable(f"{action}: Redis at {safe} is unavailable: {exc}", url=safe)


@contextmanager
def translated(client: redis.Redis, action: str) -> Iterator[None]:
    """Translate Redis outages inside the block into ``BrokerUnavailable`` (the edge where foreign errors are
    translated, CONTRIBUTING.md).

    Args:
        client: The client used in the block (for the error's location).
        action: What the block does, for the message.

    Yields:
        Nothing.

    Raises:
        BrokerUnavailable: One of ``UNAVAILABLE_ERRORS`` was raised in the block.
    """
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise unavailable(exc, client_location(client), action) from exc


def ping(client: redis.Redis) -> None:
    """Check that Redis answers.

    Args:
        client: The client.

    Raises:
        BrokerUnavailable: It does not answer within the client's timeouts.
    """
    with translated(client, "ping"):
        client.ping()
