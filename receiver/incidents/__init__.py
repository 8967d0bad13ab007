"""Incidents above alerts: grouping, the runbook's clocks, escalation, cadence, report.

``model`` holds the frozen ``Incident`` and its timeline; ``policy`` the runbook's
targets per severity (acknowledge, mitigate, resolve, update cadence, escalation
matrix); ``clocks`` the three clocks; ``lifecycle`` the pure transitions (open,
observe a trace, acknowledge, mitigate, advance the clocks) that return the new
incident and the ``effects`` to carry out; ``approvals`` puts decided approvals on
the timeline; ``grouping`` and ``rules`` say which incident a trace belongs to;
``status`` the status-page drafts; ``report`` the Incident Report and Post-Mortem
in Markdown; ``service`` folds queued traces (``queueing``) into stored incidents
(``records``), carries out effects through injected ports (an ``IncidentStore``,
an announcer, a PagerDuty escalator) and runs the ticker.

Nothing here does I/O of its own: every clock, store and client is passed in by
``create_app``. Nothing below this package (engine, sinks, store, steps, sources,
rulebook, model) imports it.
"""
