"""The HTTP edge: authentication, size and type checks, validation, problem+json.

Only this package maps ``ReceiverError`` subclasses to HTTP statuses.
"""
