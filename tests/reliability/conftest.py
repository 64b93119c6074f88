"""Print the figures the reliability tests recorded (kill points, fuzz inputs, rows checked)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rel_support import FIGURES  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if not any(FIGURES.values()):
        return
    terminalreporter.section("reliability figures")
    for name, items in FIGURES.items():
        terminalreporter.write_line(f"{name}: {len(items)}")
        for item in items:
            terminalreporter.write_line(f"  {item}")
