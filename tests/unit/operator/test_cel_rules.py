"""The CRD's CEL rules, evaluated as the API server would, on objects it must accept and refuse."""

import copy

import pytest

from internvl_operator.crd import crd_schema
from internvl_operator.validation import cel_problems, validate
from tests.unit.operator.cel_cost import (
    PER_CALL_LIMIT,
    RUNTIME_CEL_COST_BUDGET,
    crd_rule_costs,
    estimate,
)
from tests.unit.operator.test_crd import walk


def with_changes(base: dict, **spec_changes) -> dict:
    changed = copy.deepcopy(base)
    for dotted, value in spec_changes.items():
        node = changed["spec"]
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return changed


def cel_messages(obj, old=None) -> list[str]:
    return [str(p) for p in validate(obj, old)]


def test_every_rule_is_costed_and_the_estimate_stays_within_the_runtime_budget():
    # The API server refuses a CRD over its static limits (test_crd checks those); below them, an
    # object can still be refused at runtime when one call costs more than PER_CALL_LIMIT or all
    # rules together more than RUNTIME_CEL_COST_BUDGET. The estimated worst case (which, like
    # Kubernetes', counts map keys as empty strings) stays under both.
    rules = [r["rule"] for _, node in walk(crd_schema()) for r in node.get("x-kubernetes-validations", [])]
    costs = crd_rule_costs(crd_schema())
    assert sorted(c.rule for c in costs) == sorted(rules)
    assert [c for c in costs if c.cost > PER_CALL_LIMIT] == []
    assert sum(c.total for c in costs) <= RUNTIME_CEL_COST_BUDGET


def array(items: dict, max_items: int | None = None) -> dict:
    return {"type": "array", "items": items} | ({"maxItems": max_items} if max_items is not None else {})


def mapping(values: dict, max_properties: int | None = None) -> dict:
    bound = {"maxProperties": max_properties} if max_properties is not None else {}
    return {"type": "object", "additionalProperties": values} | bound


def string(max_length: int | None = None, **extra) -> dict:
    return {"type": "string", **extra} | ({"maxLength": max_length} if max_length is not None else {})


NUMBER = {"type": "number"}
OBJECT = {"type": "object", "properties": {"required": string(), "optional": string()}, "required": ["required"]}


# Expected costs from Kubernetes' own tests of the estimate (apiextensions-apiserver
# pkg/apiserver/schema/cel/compilation_test.go, TestCostEstimation).
@pytest.mark.parametrize(
    ("node", "rule", "cost"),
    [
        (array(NUMBER), "self.all(x, true)", 4718591),
        (array(NUMBER, 10), "self.all(x, true)", 32),
        (array(string()), "self.all(x, true)", 3145727),
        (array(OBJECT), "self.all(x, true)", 555128),
        (mapping(NUMBER), "self.all(x, true)", 1348169),
        (mapping(string(), 10), "self.all(x, x.contains(self[x]))", 72),
        (string(), "self.contains('test')", 314574),
        (string(10), "self.contains('test')", 5),
        (string(), "self.startsWith('test')", 2),
        (string(4), 'size(self + "hello") > size("hello")', 7),
        (array(string()), "self[1] == self[1]", 314577),
        (array(NUMBER, 10), "self.all(x, self.all(y, self.all(z, true)))", 3552),
        (string(), 'self.matches("x")', 314574),
        (string(50), 'self.matches("x")', 22),
        (string(), '"".matches("(((((((((())))))))))[0-9]")', 7),
        (string(0), 'self == "x"', 1),
        (array(NUMBER, 3 * 1024 * 2048), "self.all(x, x == 0.0)", 25165826),
        (array(mapping(OBJECT)), 'self.all(x, x["y"].required == "z")', 7340027),
        (array({"x-kubernetes-int-or-string": True}), "self[0] == 5", 3),
        (array(mapping(NUMBER), 12), "self.all(x, x.y == 25.2)", 74),
        (array(string(format="date-time")), "self.all(x, true)", 428963),
        (mapping(string(format="duration")), "self.all(x, true)", 1048577),
        (mapping({"type": "integer"}), "oldSelf.size() == self.size()", 5),
        (mapping(string(format="date-time"), 7), 'self["a"] == self["b"]', 8),
        (string(enum=["A", "B", "C", "LongValue"]), "self.contains('A')", 2),
        (string(10), "self.lowerAscii() == 'lower!'", 6),
    ],
)
def test_the_estimate_is_kubernetes_estimate(node, rule, cost):
    assert estimate(rule, node) == (cost, "bool")


def test_a_function_without_a_cost_model_is_an_error_not_a_guess():
    with pytest.raises(NotImplementedError, match="no cost model for the CEL function 'reverse'"):
        estimate("self.reverse() == self", string(8))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"method": {"type": "lora", "lora": {"rank": 64, "alpha": 128}}},
        {"method": {"type": "full"}},
        {"method": {"type": "full", "freeze": {"vision": False}}},
        {"method": {"type": "lora", "lora": {"targets": ["vision"]}, "freeze": {"llm": False}}},
        {"method": {"type": "lora", "freeze": {"vision": False}}},
        {"resources": {"gpus": 2}},
        {"resources": {"gpus": 8, "gpusPerNode": 8}},
        {"resources": {"gpus": 32, "gpusPerNode": 8}},
        {"resources": {"gpus": 12, "gpusPerNode": 4}},
        {"resources": {"scratch": {"claimName": "shared-cache"}}},
        {"resources": {"scratch": {"sizeLimit": "500Gi"}}},
    ],
)
def test_accepted(lora_cr, changes):
    assert cel_messages(with_changes(lora_cr, **changes)) == []


def test_rules_without_the_models_refuse_lora_settings_on_full(lora_cr):
    # The API server runs the CEL rules on whatever passes the schema; check them alone too.
    spec = with_changes(lora_cr, method={"type": "full", "lora": {"rank": 8}})["spec"]
    schema = crd_schema()["properties"]["spec"]
    assert [str(p) for p in cel_problems(schema, spec, location=("spec",))] == [
        "spec.method.lora: lora settings are only allowed with method type lora"
    ]


@pytest.mark.parametrize(
    ("method", "tower"),
    [
        ({"type": "lora", "freeze": {"llm": False}}, "llm"),
        ({"type": "lora", "lora": {"rank": 8}, "freeze": {"llm": False}}, "llm"),
        ({"type": "lora", "lora": {"targets": ["llm", "vision"]}, "freeze": {"vision": False}}, "vision"),
        ({"type": "lora", "lora": {"targets": ["experts"], "dropout": 0}, "freeze": {"llm": False}}, "llm"),
    ],
)
def test_rules_without_the_models_refuse_lora_on_a_tower_trained_in_full(lora_cr, method, tower):
    spec = with_changes(lora_cr, method=method)["spec"]
    schema = crd_schema()["properties"]["spec"]
    target = "experts" if "experts" in method.get("lora", {}).get("targets", []) else tower
    assert [str(p) for p in cel_problems(schema, spec, location=("spec",))] == [
        f"spec.method.freeze.{tower}: false trains the whole {tower} tower in full, so LoRA target {target} has"
        " nothing to adapt; keep the tower frozen or drop the target"
    ]


def test_rules_without_the_models_refuse_dropout_on_expert_adapters(lora_cr):
    spec = with_changes(lora_cr, method={"type": "lora", "lora": {"targets": ["llm", "experts"]}})["spec"]
    schema = crd_schema()["properties"]["spec"]
    assert [str(p) for p in cel_problems(schema, spec, location=("spec",))] == [
        "spec.method.lora.dropout: must be 0 with target experts: PEFT adapts the experts' stacked tensors"
        " without dropout"
    ]


def test_rules_without_the_models_refuse_gpus_that_do_not_fill_nodes(lora_cr):
    spec = with_changes(lora_cr, resources={"gpus": 12, "gpusPerNode": 8})["spec"]
    schema = crd_schema()["properties"]["spec"]
    assert [str(p) for p in cel_problems(schema, spec, location=("spec",))] == [
        "spec.resources.gpus: gpus must fit on one node or be a multiple of gpusPerNode"
    ]


def test_rules_without_the_models_refuse_two_kinds_of_scratch(lora_cr):
    spec = with_changes(lora_cr, resources={"scratch": {"sizeLimit": "1Ti", "claimName": "pvc"}})["spec"]
    schema = crd_schema()["properties"]["spec"]
    assert [str(p) for p in cel_problems(schema, spec, location=("spec",))] == [
        "spec.resources.scratch: set either sizeLimit (an emptyDir) or claimName (a PVC), not both"
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": {"type": "full", "lora": {"rank": 8}}}, "spec.method: lora settings are only allowed"),
        ({"resources": {"gpus": 12}}, "spec.resources: gpus (12) must fit on one node or be a multiple"),
        ({"method": {"type": "lora", "freeze": {"llm": False}}}, "spec.method.freeze.llm: false trains the whole llm"),
        ({"resources": {"scratch": {"sizeLimit": "1Ti", "claimName": "x"}}}, "spec.resources.scratch: set either"),
    ],
)
def test_models_refuse_the_same_objects_as_the_rules(lora_cr, changes, message):
    [problem] = cel_messages(with_changes(lora_cr, **changes))
    assert problem.startswith(message)


@pytest.mark.parametrize(
    "changes",
    [
        {"suspend": True},
        {"maxRestarts": 7},
        {"activeDeadlineSeconds": 3600},
        {"ttlSecondsAfterFinished": 60},
    ],
)
def test_updates_of_mutable_fields_are_accepted(lora_cr, changes):
    assert cel_messages(with_changes(lora_cr, **changes), old=lora_cr) == []


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"model__name": "InternVL3-14B"}, "spec.model"),
        ({"method__type": "full"}, "spec.method"),
        ({"data__maxTiles": 4}, "spec.data"),
        ({"training__learningRate": 1e-4}, "spec.training"),
        ({"resources__gpus": 16}, "spec.resources"),
        ({"pod__priorityClassName": "urgent"}, "spec.pod"),
        ({"launcher": "mpijob"}, "spec.launcher"),
        ({"deepspeed__stage": 3}, "spec.deepspeed"),
        ({"storage__region": "eu-west-1"}, "spec.storage"),
        ({"output__uri": "s3://models/elsewhere"}, "spec.output"),
        ({"trainerImage": "registry.example/trainer:2"}, "spec.trainerImage"),
        ({"queueName": "other"}, "spec.queueName"),
    ],
)
def test_updates_of_training_fields_are_refused(lora_cr, changes, path):
    field = path.removeprefix("spec.")
    assert cel_messages(with_changes(lora_cr, **changes), old=lora_cr) == [
        f"{path}: {field} is immutable; create a new InternVLFinetune to change it"
    ]


def test_removing_an_optional_immutable_field_is_refused(lora_cr):
    old = with_changes(lora_cr, queueName="gpu-queue")
    assert cel_messages(lora_cr, old=old) == [
        "spec.queueName: queueName is immutable; create a new InternVLFinetune to change it"
    ]


def test_transition_rules_do_not_run_on_create(lora_cr):
    assert cel_messages(with_changes(lora_cr, queueName="gpu-queue")) == []


def test_spelling_a_default_out_is_not_a_change(lora_cr):
    explicit = with_changes(lora_cr, training={"warmupRatio": 0.03, "scheduler": "cosine"})
    assert cel_messages(explicit, old=lora_cr) == []
