"""The benchmark report's parts (the measurements themselves run only under `make bench`)."""

from benchmarks import Table, interleaved, seconds_per_call
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
    date, hardware, capability, allocator, load, python, packages = machine().splitlines()
    assert capability.startswith("- torch's CPU capability: ")
    assert allocator.startswith("- torch's CPU allocator: transparent huge pages for tensors of 2 MiB and more ")
    assert load.startswith("- Load average when the run started: ")
    assert date.startswith("- Date: 20")
    assert hardware.startswith("- CPU: ") and "cores; memory" in hardware and "GPU: " in hardware
    assert python.startswith("- Python 3.")
    assert "pydantic 2." in packages and "torch 2." in packages


def test_interleaved_rounds_time_every_alternative_in_turn():
    order = []
    best = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=2, min_time=0.0)
    assert order == ["a", "b", "a", "b"]
    assert set(best) == {"a", "b"} and all(0 < seconds < 0.01 for seconds in best.values())


def test_the_operator_benchmark_names_each_request_by_its_kubernetes_verb():
    from types import SimpleNamespace

    import kmock

    from benchmarks.operator import _verb

    def request(method, action, subresource=None):
        return SimpleNamespace(method=kmock.method(method), action=action, subresource=subresource)

    assert _verb(request("GET", kmock.action.FETCH)) == "get"
    assert _verb(request("GET", kmock.action.LIST)) == "list"
    assert _verb(request("PATCH", kmock.action.UPDATE, "status")) == "patch status"
    assert _verb(request("PUT", kmock.action.UPDATE)) == "update"
    assert _verb(request("POST", kmock.action.CREATE)) == "create"
