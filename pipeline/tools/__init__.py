"""The operator tools: ``verify`` and ``inspect`` (with its ``plots``), reading exports back through
one reader (``exports``)."""
