"""Deciding and doing: the planner (pure), the runner and the journal worker.

Called by the app (worker loop) and by ``receiver replay`` (planner + runner).
"""
