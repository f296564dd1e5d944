"""bench/cross_style.py's own pieces: it refuses to run without its fonts (naming them and the step that
installs them), groups accuracy by look and family, and prints skipped rows with their reason."""
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cross_style  # noqa: E402
import glyphs  # noqa: E402


def test_without_fonts_it_names_the_missing_families_and_the_fetch_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    (tmp_path / "cross-style" / "fonts").mkdir(parents=True)
    (tmp_path / "cross-style" / "fonts" / "lato.ttf").write_bytes(b"not read before every family is there")
    assert cross_style.main(["--build-only"]) == 1
    message = capsys.readouterr().err
    assert f"{len(glyphs.FAMILIES) - 1} font families are missing" in message and "--fetch-fonts" in message
    assert "caveat" in message and "lato" not in message.split("(", 1)[1]
    assert not list((tmp_path / "cross-style").glob("glyphs-*"))


def test_unknown_rows_are_refused(capsys):
    assert cross_style.main(["--rows", "default,fastest"]) == 1
    assert "unknown rows fastest" in capsys.readouterr().err


def test_summary_groups_by_look_and_family():
    right = {"/x/A/caveat-000.png": True, "/x/B/caveat-001.png": False, "/x/A/lobster-000.png": True,
             "/x/C/press-start-2p-002.png": False}
    looks = {"caveat": "handwriting", "lobster": "display", "press-start-2p": "display"}
    got = cross_style.summary(right, looks)
    assert got == {"all": 0.5, "handwriting": 0.5, "display": 0.5, "family:caveat": 0.5, "family:lobster": 1.0,
                   "family:press-start-2p": 0.0}


def test_tables_show_results_and_skipped_rows():
    results = [{"row": "default", "val": 0.98, "test": {"all": 0.444, "handwriting": 0.38, "display": 0.51,
                                                         "family:caveat": 0.46}, "seconds": 125.2, "note": ""},
               {"row": "budget-10m", "skipped": "skipped: main.py train has no --budget yet"}]
    text = cross_style.table(results)
    assert "| default | main.py train (one-click default) | 98.0% | 44.4% | 38.0% | 51.0% | 125 |" in text
    assert "| budget-10m |" in text and "no --budget yet" in text
    assert "| caveat | handwriting | 46% |" in cross_style.family_table(results)


def test_a_failed_row_is_noted_with_the_child_s_last_meaningful_line(tmp_path, monkeypatch, capsys):
    log = tmp_path / "row.log"
    child = ("import sys; print('Model: efficientnet_lite0'); print('Measuring this device\\'s speed …');"
             "sys.exit('graft: error: The budget of 2:00 is too short: give at least 4:38.')")
    try:
        cross_style.run_logged([sys.executable, "-c", child], log, {})
    except cross_style.RowFailed as exc:
        assert exc.reason == "The budget of 2:00 is too short: give at least 4:38."
    else:
        raise AssertionError("the child failed: run_logged must raise")
    traceback = ["Training …", "Traceback (most recent call last):", '  File "x.py", line 3, in <module>',
                 "    boom()", "    ^^^^^^", "RuntimeError: out of memory", ""]
    assert cross_style.last_meaningful(traceback) == "RuntimeError: out of memory"
    assert cross_style.last_meaningful(["", "   "]) == ""

    def failing(row, built, work, env):
        raise cross_style.RowFailed(["python", "main.py", "train", "--budget"], 1, traceback)

    built = SimpleNamespace(root=tmp_path, reused=True, seconds=0.0, counts={"train": 1, "val": 1, "test": 1})
    monkeypatch.setattr(cross_style, "glyph_set", lambda params: built)
    monkeypatch.setattr(cross_style, "has_budget", lambda env: True)
    monkeypatch.setattr(cross_style, "run_row", failing)
    assert cross_style.main(["--rows", "budget-2m"]) == 0
    out = capsys.readouterr().out
    assert "| budget-2m | main.py train --budget 2m | – | – | – | – | – | failed: RuntimeError: out of memory |" in out
