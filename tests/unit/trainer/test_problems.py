"""How problems with user input are located and printed."""

import pytest

from internvl_trainer.problems import BadInput, Problem, field_path, load_yaml_documents, render_text


@pytest.mark.parametrize(
    ("location", "path"),
    [
        (("spec", "method", "lora", "rank"), "spec.method.lora.rank"),
        (("spec", "pod", "tolerations", 0, "effect"), "spec.pod.tolerations[0].effect"),
        (("spec", "pod", "nodeSelector", "zone", "[key]"), "spec.pod.nodeSelector.zone"),
        (("spec", "pod", "nodeSelector", "kubernetes.io/arch"), "spec.pod.nodeSelector[kubernetes.io/arch]"),
        ((), ""),
    ],
)
def test_field_path(location, path):
    assert field_path(location) == path


def test_render_text_is_one_problem_per_line():
    text = render_text([Problem("spec.a", "bad"), Problem("", "whole file is bad")])
    assert text == "spec.a: bad\nwhole file is bad\n"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    source = tmp_path / "bad.yaml"
    source.write_text("spec:\n  model: {name: x\n  data: 1\n")
    with pytest.raises(BadInput) as caught:
        load_yaml_documents(str(source))
    [problem] = caught.value.problems
    assert problem.path == f"{source}:3:7"
    assert problem.message.startswith("invalid YAML: ")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(BadInput) as caught:
        load_yaml_documents(str(tmp_path / "absent.yaml"))
    assert str(caught.value.problems[0]) == f"{tmp_path / 'absent.yaml'}: No such file or directory"


def test_empty_documents_are_dropped(tmp_path):
    source = tmp_path / "two.yaml"
    source.write_text("---\na: 1\n---\n---\nb: 2\n")
    assert load_yaml_documents(str(source)) == [{"a": 1}, {"b": 2}]
