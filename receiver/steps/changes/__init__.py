"""``changes.*`` steps: one module per step type, behind ``ChangesExecutor``.

``recent`` holds ``changes.recent`` (model and run); ``executor`` the executor
``create_app`` builds with a reader of the stored change events.
"""

from __future__ import annotations

from receiver.steps.changes.executor import ChangesExecutor

__all__ = ["ChangesExecutor"]
