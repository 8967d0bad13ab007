"""``redis.*`` steps: one module per step type, behind ``RedisExecutor``.

``get``, ``info``, ``delete_keys``, ``delete_pattern`` and
``reset_circuit_breaker`` hold a step's model and the code that runs it;
``base`` the models' shared base, ``text`` how values are shown and
``executor`` the executor holding one client per named target and the reads
and deletes the steps run through.
"""

from __future__ import annotations

from receiver.steps.redis.executor import RedisExecutor
from receiver.steps.redis.text import MAX_VALUE_CHARS

# The order the step reference and the rule schema list the step modules in
# (reads, then deletes); a module not named here comes after them.
ORDER = ("get", "info", "delete_keys", "delete_pattern", "reset_circuit_breaker")

__all__ = ["MAX_VALUE_CHARS", "ORDER", "RedisExecutor"]
