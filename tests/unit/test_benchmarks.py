"""The benchmark report's parts (the measurements themselves run only under `make bench`)."""

from benchmarks import Table, seconds_per_call
from benchmarks.__main__ import machine


def test_table_renders_as_markdown():
    table = Table("Speed", "Measured once.", ["Check", "Time"], [["a", "1 ms"], ["b", "2 ms"]])
    assert table.markdown() == (
        "## Speed\n\nMeasured once.\n\n| Check | Time |\n|---|---|\n| a | 1 ms |\n| b | 2 ms |\n"
    )


def test_seconds_per_call_averages_over_many_calls():
    calls = []
    seconds = seconds_per_call(lambda: calls.append(1), repeats=2, min_time=0.01)
    assert len(calls) >= 2
    assert 0 < seconds < 0.01


def test_machine_description_names_date_hardware_and_versions():
    date, hardware, load, python, packages = machine().splitlines()
    assert load.startswith("- Load average when the run started: ")
    assert date.startswith("- Date: 20")
    assert hardware.startswith("- CPU: ") and "cores; memory" in hardware and "GPU: " in hardware
    assert python.startswith("- Python 3.")
    assert "pydantic 2." in packages and "torch 2." in packages
