"""Incidents above alerts: grouping, the runbook's clocks, escalation, cadence, report.

``model`` holds the frozen ``Incident`` and its timeline; ``policy`` the runbook's
targets per severity (acknowledge, mitigate, resolve, update cadence, escalation
matrix); ``lifecycle`` the pure transitions (open, observe a trace, acknowledge,
mitigate, advance the clocks) that return the new incident and the effects to
carry out; ``status`` the status-page drafts; ``report`` the Incident Report and
Post-Mortem in Markdown; ``service`` applies effects through injected ports (an
``IncidentStore``, an announcer, a PagerDuty escalator) and runs the ticker.

Nothing here does I/O of its own: every clock, store and client is passed in by
``create_app``. Nothing below this package (engine, sinks, store, steps, sources,
rulebook, model) imports it.
"""
