"""Every python example of docs/LIBRARY.md runs, in order, in one namespace (as a reader would)."""
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def examples():
    with open(os.path.join(REPO, "docs", "LIBRARY.md")) as handle:
        text = handle.read()
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)


def test_the_library_doc_has_its_examples():
    assert len(examples()) >= 7


def test_every_library_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "library_doc"}
    for i, code in enumerate(examples()):
        exec(compile(code, f"docs/LIBRARY.md example {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "(100, (100, 8))" in printed and "(50, (50, 8))" in printed
    assert "['null_key', 'non_finite:dense']" in printed
    assert "500 500 0" in printed
