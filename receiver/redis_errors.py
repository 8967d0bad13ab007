"""What a Redis error means: down for now (and how), or a bug of ours.

Shared by the Redis stores (``receiver.store.redis``, the incident store),
which turn "down for now" into ``StoreUnavailableError``, and the ``redis.*``
steps (``receiver.steps.redis.executor``), which retry a target that is not
serving for now as they retry one that is unreachable. Neither layer may import
the other, so the reading of Redis's replies lives here, once.
"""

from __future__ import annotations

import redis.exceptions

# Replies that mean "not now, retry later", not "your request is wrong", by the
# error code Redis starts them with. Write refusals: a failed snapshot (MISCONF),
# too few replicas (NOREPLICAS), and OOM and READONLY, which redis-py raises as
# classes of their own. Not serving for now: a script or function running past
# busy-reply-threshold (BUSY), a blocking read cut short by a failover
# (UNBLOCKED), and a replica cut off from its master (MASTERDOWN) or a cluster
# failing over or resharding (CLUSTERDOWN, TRYAGAIN), raised as classes of their
# own (redis-py drops their code from the message). LOADING is a
# ConnectionError in redis-py: unreachable.
_WRITE_REFUSALS = frozenset({"MISCONF", "NOREPLICAS"})
_NOT_SERVING = frozenset({"BUSY", "UNBLOCKED"})
_REFUSING_CLASSES = redis.exceptions.OutOfMemoryError | redis.exceptions.ReadOnlyError
_NOT_SERVING_CLASSES = (
    redis.exceptions.ClusterDownError  # MasterDownError is one
    | redis.exceptions.TryAgainError
)
# How redis-py words an error in a pipeline: the reply, quoted, comes last.
_IN_PIPELINE = "of pipeline caused error: ("


def _reply_code(exc: redis.exceptions.ResponseError) -> str:
    """The first word of Redis's error reply (``BUSY``), as the message keeps it.

    In a pipeline redis-py rewrites it: ``Command # 1 (XLEN k) of pipeline
    caused error: ('BUSY Redis is busy ...',)``.
    """
    text = str(exc)
    at = text.rfind(_IN_PIPELINE)
    if at >= 0:
        text = text[at + len(_IN_PIPELINE) + 1 :]  # past the opening quote
    return text.split(" ", 1)[0]


def not_serving(exc: redis.exceptions.RedisError) -> bool:
    """Whether Redis answered that it is busy or failing over (alone or in a pipeline).

    BUSY, UNBLOCKED, MASTERDOWN, CLUSTERDOWN, TRYAGAIN: the command was not
    run, and the same command may succeed once the script ends or the
    failover is over.
    """
    if not isinstance(exc, redis.exceptions.ResponseError):
        return False
    return isinstance(exc, _NOT_SERVING_CLASSES) or _reply_code(exc) in _NOT_SERVING


def outage(exc: redis.exceptions.RedisError) -> str | None:
    """How Redis cannot take this now ("is unreachable", ...), or None.

    Unreachable or loading, refusing our credentials, refusing writes (a
    failover's replica, out of memory), or not serving for now (busy with a
    script, failing over): the store is down for now and the caller retries
    later. Any other error (None) is a bug of ours.
    """
    if isinstance(exc, redis.exceptions.AuthenticationError):
        # A ConnectionError in redis-py: retried like one, but said as it is.
        return "refuses the credentials in the store URL (check user and password)"
    unreachable = redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
    if isinstance(exc, unreachable):
        return "is unreachable"
    if not isinstance(exc, redis.exceptions.ResponseError):
        return None
    if isinstance(exc, _REFUSING_CLASSES) or _reply_code(exc) in _WRITE_REFUSALS:
        return "refuses writes"
    if not_serving(exc):
        return "is busy or failing over"
    return None
