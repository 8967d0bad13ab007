"""Redis store: the shared ``Store`` for several replicas of the receiver.

The HTTP edge appends payloads here, workers on every replica claim and complete
them, and the runner's guards (idempotency keys, locks, cooldowns, budgets,
circuits, approvals) live here so that replicas see one another. Built by
whatever wires the application (``create_app`` receives it); nothing here reads
settings or the environment.

Key layout (``P`` is the configured prefix; every name after it is the caller's)::

    P:journal              stream of unfinished entries: fields id, received_at;
                           consumer group ``workers``; an entry is XACKed and
                           XDELed when completed, so XLEN is the unfinished count
    P:payload:{id}         hash: source, received_at, headers (JSON), body,
                           stream (its stream id), attempts, done, state
                           (pending|claimed|done|parked), consumer, last_error,
                           parked_at; no TTL while unfinished, ``max_age`` once
                           completed
    P:leases               sorted set of claimed entry ids, score = lease end
                           (the caller's clock, ms); a lapsed one is reclaimed
                           with XCLAIM
    P:parked               sorted set of parked entry ids, score parked_at (ms)
    P:incarnations         sorted set of worker incarnations, score = alive
                           until (the caller's clock, ms); forgotten 8 days
                           after death (run-once claims live 7)
    P:held:{incarnation}   set of lock names an incarnation took (recovery)
    P:pause                JSON Pause while the global pause is on
    P:payloads             sorted set of every stored id, score received_at (ms)
    P:finished             sorted set of completed ids, score received_at (ms)
    P:decisions            list of decision records, newest first, capped at
                           ``max_decisions``; each element is
                           "<decided_at as 13-digit epoch ms> <JSON record>"
                           so pruning by age never decodes JSON; TTL ``max_age``
    P:alert:{fingerprint}  hash: status, starts_at, updated_at; TTL ``max_age``
    P:seen:{key}           "1", SET NX PX ttl
    P:claim:{key}          JSON Claim with expires_ms and the intent recorded
                           by mark_sending; finishing keeps the TTL
    P:lock:{name}          "owner|token|expires_ms"
    P:fence                INCR counter for lock fencing tokens (never expires:
                           tokens must keep increasing)
    P:last-run:{scope}     "<ISO timestamp> <expires_ms>"
    P:budget:{scope}       sorted set of runs, score = the caller's ``now`` (ms),
                           member "<ms>:<random>" (the ``BudgetSlot``)
    P:circuit:{scope}      hash: failures, opened_at; TTL ``max_age``
    P:approval:{id}        hash: key, created_at, expires_at, request (JSON),
                           status, decided_by, decided_at; TTL until expires_at
                           plus a day
    P:approval-key:{key}   the approval id for an idempotency key, same TTL
    P:approvals            sorted set of approval ids, score created_at (ms)

Timestamps stored as values are ISO 8601 in UTC with microseconds (fixed width,
so they compare as strings in Lua); scores are epoch milliseconds. Every
multi-key change is one Lua script, so it is atomic. No command here enumerates
the keyspace: no KEYS, no SCAN, no FLUSH*.

Every expiry that decides something (leases, locks, run-once claims,
cooldowns, budget windows, incarnation liveness) is stored as the caller's time
and compared with the caller's ``now`` inside the scripts. Keys also get a
``PXAT`` to collect garbage, never earlier than the caller's deadline (and, if
the caller's clock lags Redis's, at least the full TTL in Redis's time). Only
delivery ids (``seen``) use a plain Redis TTL: no guard reads them.
"""

from receiver.store.redis.store import RedisStore

__all__ = ["RedisStore"]
