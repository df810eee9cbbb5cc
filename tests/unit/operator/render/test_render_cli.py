"""`internvl-operator render` prints every example's children, planned and valid."""

import pytest
import yaml

from internvl_operator.cli import main
from internvl_operator.launchers import AUTO_ORDER, LAUNCHERS
from tests.conftest import EXAMPLES, load_example
from tests.unit.operator.render.conftest import schema_errors

OBJECT_EXAMPLES = sorted(path.name for path in EXAMPLES.glob("*.yaml") if path.name != "train.yaml")
# The examples that set fields a TrainJob cannot carry (auto runs them as the next launcher).
NOT_FOR_TRAINJOB = {"full-internvl2_5-26b.yaml"}


def rendered_kind(example: str, launcher: str | None) -> str:
    """The job kind the operator creates for the example on a cluster serving only ``launcher``
    (None: every launcher)."""
    named = load_example(example)["spec"].get("launcher", "auto")
    if named != "auto":
        return LAUNCHERS[named].kind
    if launcher is None:
        return LAUNCHERS["pytorchjob" if example in NOT_FOR_TRAINJOB else "trainjob"].kind
    return LAUNCHERS[launcher].kind


@pytest.mark.parametrize("launcher", [None, *AUTO_ORDER])
@pytest.mark.parametrize("example", OBJECT_EXAMPLES)
def test_every_example_renders_valid_children_with_each_launcher(example, launcher, capsys):
    flag = ["--launcher", launcher] if launcher else []
    code = main(["render", *flag, str(EXAMPLES / example)])
    if launcher == "trainjob" and example in NOT_FOR_TRAINJOB:
        assert code == 2
        assert "the launchers this cluster serves cannot carry the spec: TrainJob (spec.pod.priorityClassName" in (
            capsys.readouterr().err
        )
        return
    assert code == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in documents[:4]] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding"]
    assert documents[-1]["kind"] == rendered_kind(example, launcher)
    for document in documents:
        assert schema_errors(document) == [], document["kind"]


def test_render_follows_the_attempt(capsys):
    assert main(["render", "--attempt", "3", str(EXAMPLES / "lora-internvl3-8b.yaml")]) == 0
    *_, job = yaml.safe_load_all(capsys.readouterr().out)
    assert job["metadata"]["name"] == "charts-lora-a3"


def test_an_invalid_object_is_bad_input(tmp_path, capsys, lora_cr):
    lora_cr["spec"]["launcher"] = "slurm"
    source = tmp_path / "bad.yaml"
    source.write_text(yaml.safe_dump(lora_cr))
    assert main(["render", str(source)]) == 2
    assert capsys.readouterr().err == (
        "spec.launcher: Input should be 'auto', 'trainjob', 'pytorchjob' or 'mpijob', got 'slurm'\n"
    )


def test_a_field_the_launcher_cannot_carry_is_bad_input(tmp_path, capsys, lora_cr):
    lora_cr["spec"]["launcher"] = "trainjob"
    lora_cr["spec"]["ttlSecondsAfterFinished"] = 600
    source = tmp_path / "bad.yaml"
    source.write_text(yaml.safe_dump(lora_cr))
    assert main(["render", str(source)]) == 2
    assert capsys.readouterr().err == (
        f"{source}: InternVLFinetune/{lora_cr['metadata']['name']}: spec.ttlSecondsAfterFinished: "
        "a TrainJob of Kubeflow Trainer v2.3 has no time-to-live\n"
    )


def test_nothing_fits_is_bad_input(tmp_path, capsys, lora_cr):
    lora_cr["spec"]["model"]["name"] = "InternVL3-78B"
    lora_cr["spec"]["method"] = {"type": "full"}
    lora_cr["spec"]["resources"] = {"policy": "minimal", "gpuMemoryGiB": 8, "gpusPerNode": 1, "memory": "16Gi"}
    source = tmp_path / "huge.yaml"
    source.write_text(yaml.safe_dump(lora_cr))
    assert main(["render", str(source)]) == 2
    assert capsys.readouterr().err.startswith(f"{source}: InternVLFinetune/charts-lora: ")


def test_render_refuses_what_the_installation_refuses(tmp_path, capsys, monkeypatch, lora_cr):
    lora_cr["spec"]["pod"] = {"hostNetwork": True}
    source = tmp_path / "host.yaml"
    source.write_text(yaml.safe_dump(lora_cr))
    assert main(["render", str(source)]) == 2
    refusal = capsys.readouterr().err
    assert refusal.startswith(f"{source}: InternVLFinetune/charts-lora: spec.pod.hostNetwork: this installation")

    assert main(["render", "--allow-host-network", "true", str(source)]) == 0
    *_, job = yaml.safe_load_all(capsys.readouterr().out)
    assert {spec["template"]["spec"]["hostNetwork"] for spec in job["spec"]["pytorchReplicaSpecs"].values()} == {True}

    monkeypatch.setenv("INTERNVL_OPERATOR_TRAINER_IMAGE", "registry.example/trainer:1")
    assert main(["render", "--allow-host-network", "true", str(source)]) == 0
    *_, job = yaml.safe_load_all(capsys.readouterr().out)
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/trainer:1"
    )
