"""`make demo` runs every step with the exit code the step expects."""

from examples import demo


def test_demo_runs_every_step(capsys):
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert out.count("\n== ") == len(demo.STEPS)
    assert out.rstrip().endswith("demo finished: every step gave the expected result")
