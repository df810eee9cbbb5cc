"""``internvl-operator plan``: the table, YAML and JSON forms, and exit codes."""

import json

import yaml

from internvl_operator.cli import main
from internvl_trainer.config import MODEL_NAMES
from tests.conftest import EXAMPLES


def write(tmp_path, name: str, *documents) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def test_table(capsys):
    source = str(EXAMPLES / "full-internvl2_5-26b.yaml")
    assert main(["plan", source]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{source}: InternVLFinetune/docs-full-26b: InternVL2_5-26B full, policy explicit: fits"
    assert lines[1:9] == [
        "launcher                     auto: pytorchjob on a cluster serving every launcher "
        "(order trainjob, pytorchjob, mpijob)",
        "nodes x GPUs                 2 x 8 (16 GPUs)",
        "DeepSpeed                    ZeRO-3 (zero_stage3_config)",
        "batch                        2 per device x 4 accumulation x 16 GPUs = 128",
        "learning rate                2e-05 (weight decay 0.05)",
        "drop path                    0.4",
        "limits                       8192 tokens, 6 tiles per image",
        "memory per GPU               37.2 GiB estimated, budget 72.0 of 80 GiB",
    ]
    assert "  layer recompute            3.19 GiB" in lines
    assert lines[lines.index("notes:") + 1].startswith("  - recipe: InternVL's internvl2.5/2nd_finetune/")


def test_json(capsys):
    source = str(EXAMPLES / "lora-internvl3-8b.yaml")
    assert main(["plan", "--output", "json", source]) == 0
    [entry] = json.loads(capsys.readouterr().out)["plans"]
    assert (entry["file"], entry["index"], entry["name"]) == (source, 0, "InternVLFinetune/charts-lora")
    assert entry["launcher"] == "trainjob"
    planned = entry["plan"]
    assert (planned["gpus"], planned["zeroStage"], planned["perDeviceBatchSize"]) == (2, 1, 4)
    assert (planned["verdict"], planned["memory"]["totalGiB"], planned["gpuMemoryGiB"]) == ("fits", 52.56, 80.0)


def test_yaml_with_two_documents(tmp_path, capsys, lora_cr, full_cr):
    source = write(tmp_path, "two.yaml", lora_cr, full_cr)
    assert main(["plan", "--output", "yaml", source]) == 0
    report = yaml.safe_load(capsys.readouterr().out)
    assert [entry["plan"]["model"] for entry in report["plans"]] == ["InternVL3-8B", "InternVL2_5-26B"]
    assert [entry["plan"]["policy"] for entry in report["plans"]] == ["recipe", "explicit"]


def test_nothing_fits_exits_2_with_the_reason(tmp_path, capsys, lora_cr):
    lora_cr["spec"]["model"]["name"] = "InternVL3-78B"
    lora_cr["spec"]["resources"] = {"policy": "minimal", "gpuMemoryGiB": 24, "gpusPerNode": 8}
    source = write(tmp_path, "big.yaml", lora_cr)
    assert main(["plan", source]) == 2
    output = capsys.readouterr().out
    assert "InternVL3-78B lora, policy minimal: nothing-fits" in output
    assert "  - nothing fits the 21.6 GiB budget (90% of 24 GiB)" in output


def test_invalid_object_exits_2_with_field_paths(tmp_path, capsys, lora_cr):
    lora_cr["spec"]["method"] = {"type": "lora", "lora": {"rank": 0}}
    source = write(tmp_path, "bad.yaml", lora_cr)
    assert main(["plan", source]) == 2
    assert capsys.readouterr().err.splitlines() == ["spec.method.lora.rank: Input should be greater than or equal to 1"]


def test_contradicting_choices_exit_2(tmp_path, capsys, lora_cr):
    lora_cr["spec"]["deepspeed"] = {"stage": 2, "offload": "cpu"}
    source = write(tmp_path, "offload.yaml", lora_cr)
    assert main(["plan", "--output", "json", source]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "valid": False,
        "problems": [{"path": "spec.deepspeed.offload", "message": "cpu offload needs ZeRO stage 3, got stage 2"}],
    }


def test_file_without_objects(tmp_path, capsys):
    source = write(tmp_path, "empty.yaml", {"kind": "ConfigMap"})
    assert main(["plan", source]) == 2
    assert capsys.readouterr().err == f"{source}: no InternVLFinetune object in the file\n"


def test_every_internvl3_5_name_plans(tmp_path, capsys, lora_cr, full_cr):
    names = [name for name in MODEL_NAMES if name.startswith("InternVL3_5-")]
    documents = []
    for name in names:
        for document in (lora_cr, full_cr):
            copy = json.loads(json.dumps(document))
            copy["spec"]["model"]["name"] = name
            documents.append(copy)
    assert main(["plan", "--output", "json", write(tmp_path, "all.yaml", *documents)]) == 0
    plans = [entry["plan"] for entry in json.loads(capsys.readouterr().out)["plans"]]
    assert [(plan["model"], plan["method"]) for plan in plans] == [
        (name, method) for name in names for method in ("lora", "full")
    ]


def test_the_moe_example_says_which_experts_each_gpu_holds(capsys):
    source = str(EXAMPLES / "full-internvl3_5-30b-a3b.yaml")
    assert main(["plan", source]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("InternVL3_5-30B-A3B full, policy explicit: fits")
    assert lines[-1].endswith("ZeRO-3 shards every expert tensor over the 16 GPUs: GPU r holds experts 8r to 8r+7 "
                              "of every layer and gathers a layer's 128 experts to run it")  # fmt: skip
