"""The ``replaystore`` command line (installed as the ``replaystore_cli`` package)."""
