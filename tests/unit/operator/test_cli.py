"""``internvl-operator``: exit codes, the ``field.path: reason`` lines, JSON output, files written."""

import json

import yaml

from internvl_operator.cli import main
from internvl_operator.crd import CRD_FILENAME, crd_yaml
from tests.conftest import EXAMPLES


def write(tmp_path, name: str, *documents) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def test_valid_examples_exit_0(capsys):
    files = [str(EXAMPLES / "lora-internvl3-8b.yaml"), str(EXAMPLES / "full-internvl2_5-26b.yaml")]
    assert main(["validate", *files]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{files[0]}: InternVLFinetune/charts-lora: valid",
        f"{files[1]}: InternVLFinetune/docs-full-26b: valid",
    ]


def test_every_problem_is_one_field_path_line_and_exit_2(tmp_path, capsys, lora_cr):
    lora_cr["spec"]["method"] = {"type": "lora", "lora": {"rank": 0}}
    lora_cr["spec"]["data"]["overlong"] = "drop"
    source = write(tmp_path, "bad.yaml", lora_cr)
    assert main(["validate", source]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"{source}: InternVLFinetune/charts-lora: invalid",
        "spec.method.lora.rank: Input should be greater than or equal to 1",
        "spec.data.overlong: Input should be 'skip', 'truncate' or 'reduce-tiles', got 'drop'",
    ]


def test_lora_on_a_tower_trained_in_full_is_refused_by_validate(tmp_path, capsys, lora_cr):
    # The trainer refused it after scheduling and loading the base.
    lora_cr["spec"]["method"] = {"type": "lora", "freeze": {"llm": False}}
    source = write(tmp_path, "trained-llm.yaml", lora_cr)
    assert main(["validate", source]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"{source}: InternVLFinetune/charts-lora: invalid",
        "spec.method.freeze.llm: false trains the whole llm tower in full, so LoRA target llm has nothing to adapt;"
        " keep the tower frozen or drop the target",
    ]


def test_more_vision_layers_than_the_catalog_tower_has_are_refused_by_plan(tmp_path, capsys, lora_cr):
    lora_cr["spec"]["method"] = {"type": "lora", "unfreezeVisionLayers": 100}
    source = write(tmp_path, "too-deep.yaml", lora_cr)
    assert main(["plan", source]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "spec.method.unfreezeVisionLayers: 100 exceeds the vision tower's 24 layers"
    ]


def test_json_output_lists_problems_per_document(tmp_path, capsys, lora_cr):
    good = dict(lora_cr)
    bad = json.loads(json.dumps(lora_cr))
    bad["spec"]["resources"] = {"gpus": 12}
    source = write(tmp_path, "two.yaml", good, bad)
    assert main(["validate", "--output", "json", source]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert [d["problems"] for d in report["documents"]] == [
        [],
        [{"path": "spec.resources", "message": "gpus (12) must fit on one node or be a multiple of gpusPerNode (8)"}],
    ]


def test_old_object_enables_transition_rules(tmp_path, capsys, lora_cr):
    old = write(tmp_path, "old.yaml", lora_cr)
    changed = json.loads(json.dumps(lora_cr))
    changed["spec"]["model"]["name"] = "InternVL3-2B"
    new = write(tmp_path, "new.yaml", changed)
    assert main(["validate", new]) == 0
    capsys.readouterr()
    assert main(["validate", "--old", old, new]) == 2
    assert (
        "spec.model: model is immutable; create a new InternVLFinetune to change it"
        in capsys.readouterr().out.splitlines()
    )


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    source = tmp_path / "broken.yaml"
    source.write_text("apiVersion: internvl.dev/v1alpha1\nspec:\n  model: [unclosed\n")
    assert main(["validate", str(source)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"{source}:4:1: invalid YAML")


def test_a_file_without_the_kind_is_bad_input(tmp_path, capsys):
    source = write(tmp_path, "cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    assert main(["validate", "--output", "json", source]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "valid": False,
        "problems": [{"path": source, "message": "no InternVLFinetune object in the file"}],
    }


def test_crds_writes_the_generated_file(tmp_path, capsys):
    assert main(["crds", "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / CRD_FILENAME).read_text() == crd_yaml()
    assert main(["crds"]) == 0
    assert capsys.readouterr().out == crd_yaml()


def test_run_needs_namespaces_or_all(capsys):
    assert main(["run"]) == 2
    assert capsys.readouterr().err == "--namespace: name the namespaces to watch (-n, repeatable) or --all-namespaces\n"
