"""``http.*`` steps: one module per step type, behind ``HttpExecutor``.

``get`` holds ``http.get`` and ``request`` holds ``http.request`` (model and
run each); ``executor`` the executor holding the allowlisted client, which
also polls the ``http.get`` verify.
"""

from __future__ import annotations

from receiver.steps.http.executor import HttpExecutor, json_path, warm_up

__all__ = ["HttpExecutor", "json_path", "warm_up"]
