"""Rule files: loading, validation, matchers, the rule index and severity.

Pure: reads rule files when asked, otherwise does no I/O. Called by the engine,
the CLI (``rules check``/``rules test``/``replay``) and the app at start-up.
"""
