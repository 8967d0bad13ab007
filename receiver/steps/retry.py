"""The one retry policy of step executors: bounded, jittered, typed errors only.

Used by the http, prometheus and redis executors; tenacity does the work.
"""

from __future__ import annotations

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)


def retrying(
    on: type[BaseException] | tuple[type[BaseException], ...],
    *,
    attempts: int = 3,
    multiplier: float = 0.2,
    cap: float = 2.0,
) -> AsyncRetrying:
    """Retry ``on`` errors up to ``attempts`` times with jittered backoff."""
    return AsyncRetrying(
        retry=retry_if_exception_type(on),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=multiplier, max=cap),
        reraise=True,
    )
