"""The built-in demo: generated users (``users``), the demo and reference models (``models``), and
``embedding-export demo`` (``run``), which exports them locally."""
