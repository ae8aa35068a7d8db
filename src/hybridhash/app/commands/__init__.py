"""The sub-commands of ``hybridhash``: one module each, with ``HELP``, ``configure(parser)`` and ``run(args)``."""
