"""benchmarks/results_file.py: a run's section goes to the day's log file, benchmarks/log/YYYY-MM-DD.md."""

from datetime import datetime, timezone

from benchmarks import results_file


def test_sections_append_to_the_days_log_file(tmp_path, monkeypatch):
    monkeypatch.setattr(results_file, "LOG_DIR", tmp_path / "log")
    results_file.append_section(["", "## First run (2026-12-06 01:00 UTC)", "", "| a | 1.5 |"])
    results_file.append_section(["", "## Second run (2026-12-06 02:00 UTC)"])
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    files = list((tmp_path / "log").iterdir())
    assert [f.name for f in files] == [f"{day}.md"]
    text = files[0].read_text()
    assert text.startswith(f"# Benchmark log, {day}\n") and text.count("# Benchmark log") == 1
    assert text.index("## First run") < text.index("| a | 1.5 |") < text.index("## Second run")


def test_log_file_is_named_by_the_utc_day():
    when = datetime(2026, 11, 30, 23, 59, tzinfo=timezone.utc)
    assert results_file.log_file(when) == results_file.LOG_DIR / "2026-11-30.md"
