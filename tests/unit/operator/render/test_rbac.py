"""The trainer's identity may read and patch its own object's status, nothing else."""

from internvl_operator.render import render
from tests.unit.operator.render.conftest import context_for


def test_role_allows_only_this_objects_status(lora_cr):
    _, account, role, binding, _ = render(context_for(lora_cr, attempt=2))
    assert (
        account["metadata"]["name"] == role["metadata"]["name"] == binding["metadata"]["name"] == "charts-lora-trainer"
    )
    assert role["rules"] == [
        {
            "apiGroups": ["internvl.dev"],
            "resources": ["internvlfinetunes/status"],
            "resourceNames": ["charts-lora"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "charts-lora-trainer",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "charts-lora-trainer", "namespace": "ml"}]


def test_identity_is_shared_by_attempts(lora_cr):
    first = render(context_for(lora_cr, attempt=1))[1:4]
    second = render(context_for(lora_cr, attempt=2))[1:4]
    assert first == second
    assert "internvl.dev/attempt" not in first[0]["metadata"]["labels"]
