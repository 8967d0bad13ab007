"""Alert-automation receiver: Alertmanager and PagerDuty in, safe playbooks out.

The public surface is the ``receiver`` command (``receiver.cli``) and
``receiver.app.create_app``; everything else is internal.
"""

__version__ = "0.1.0"
