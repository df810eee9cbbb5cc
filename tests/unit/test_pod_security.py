"""The "restricted" Pod Security Standard check of the tests: it passes a pod that meets every
control and names the control each single change breaks."""

import copy

import pytest

from tests.unit.pod_security import baseline_violations, restricted_violations

COMPLIANT = {
    "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/main": "runtime/default"}},
    "spec": {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
            "seLinuxOptions": {"type": "container_t"},
            "sysctls": [{"name": "net/ipv4/ip_local_port_range", "value": "1024 65535"}],
        },
        "containers": [
            {
                "name": "main",
                "ports": [{"containerPort": 2222}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                    "procMount": "Default",
                    "appArmorProfile": {"type": "RuntimeDefault"},
                },
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
            }
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": "c"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
            {"name": "keys", "secret": {"secretName": "k"}},
            {"name": "token", "projected": {"sources": []}},
        ],
    },
}


def changed(path, value):
    template = copy.deepcopy(COMPLIANT)
    *parents, key = path
    node = template
    for part in parents:
        node = node[part]
    if value is None:
        del node[key]
    else:
        node[key] = value
    return template


CONTAINER = ("spec", "containers", 0)
POD_CONTEXT = ("spec", "securityContext")
CONTAINER_CONTEXT = (*CONTAINER, "securityContext")

VIOLATIONS = [
    # baseline
    (("spec", "hostNetwork"), True, "host namespaces"),
    (("spec", "hostPID"), True, "host namespaces"),
    (("spec", "hostIPC"), True, "host namespaces"),
    ((*CONTAINER_CONTEXT, "privileged"), True, "privileged"),
    ((*CONTAINER_CONTEXT, "windowsOptions"), {"hostProcess": True}, "hostProcess"),
    (("spec", "volumes", 1), {"name": "scratch", "hostPath": {"path": "/"}}, "restricted volume types"),
    ((*CONTAINER, "ports", 0, "hostPort"), 2222, "hostPort"),
    ((*CONTAINER, "livenessProbe", "httpGet", "host"), "10.0.0.1", "probe or lifecycle host"),
    (
        ("metadata", "annotations", "container.apparmor.security.beta.kubernetes.io/main"),
        "unconfined",
        "forbidden AppArmor profile",
    ),
    ((*CONTAINER_CONTEXT, "appArmorProfile"), {"type": "Unconfined"}, "forbidden AppArmor profile"),
    ((*POD_CONTEXT, "seLinuxOptions"), {"type": "spc_t"}, "seLinuxOptions"),
    ((*POD_CONTEXT, "seLinuxOptions"), {"user": "system_u"}, "seLinuxOptions"),
    ((*CONTAINER_CONTEXT, "procMount"), "Unmasked", "procMount"),
    ((*POD_CONTEXT, "sysctls"), [{"name": "kernel.msgmax", "value": "1"}], "forbidden sysctls"),
    # restricted
    (("spec", "volumes", 1), {"name": "scratch", "nfs": {"server": "s", "path": "/"}}, "restricted volume types"),
    ((*CONTAINER_CONTEXT, "allowPrivilegeEscalation"), None, "allowPrivilegeEscalation != false"),
    ((*CONTAINER_CONTEXT, "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation != false"),
    ((*POD_CONTEXT, "runAsNonRoot"), None, "runAsNonRoot != true"),
    ((*CONTAINER_CONTEXT, "runAsNonRoot"), False, "runAsNonRoot != true"),
    ((*POD_CONTEXT, "runAsUser"), 0, "runAsUser=0"),
    ((*CONTAINER_CONTEXT, "runAsUser"), 0, "runAsUser=0"),
    ((*POD_CONTEXT, "seccompProfile"), None, "seccompProfile"),
    ((*POD_CONTEXT, "seccompProfile"), {"type": "Unconfined"}, "seccompProfile"),
    ((*CONTAINER_CONTEXT, "seccompProfile"), {"type": "Unconfined"}, "seccompProfile"),
    ((*CONTAINER_CONTEXT, "capabilities"), {"add": ["NET_BIND_SERVICE"]}, "unrestricted capabilities"),
    ((*CONTAINER_CONTEXT, "capabilities"), {"drop": ["ALL"], "add": ["CHOWN"]}, "unrestricted capabilities"),
]


def test_a_pod_meeting_every_control_passes():
    assert restricted_violations(COMPLIANT) == []


@pytest.mark.parametrize(("path", "value", "control"), VIOLATIONS)
def test_each_control_is_checked(path, value, control):
    problems = restricted_violations(changed(path, value))
    assert problems and {problem.split(":")[0] for problem in problems} == {control}, problems


def test_restricted_controls_go_beyond_baseline():
    assert baseline_violations(changed((*CONTAINER_CONTEXT, "capabilities"), {"add": ["CHOWN"]})) == []
    assert baseline_violations(changed((*CONTAINER_CONTEXT, "capabilities"), {"add": ["SYS_ADMIN"]}))
    assert baseline_violations(changed((*POD_CONTEXT, "runAsNonRoot"), None)) == []


def test_init_and_ephemeral_containers_are_checked():
    for field in ("initContainers", "ephemeralContainers"):
        template = copy.deepcopy(COMPLIANT)
        template["spec"][field] = [{"name": "extra", "securityContext": {"privileged": True}}]
        problems = {problem.split(":")[0] for problem in restricted_violations(template)}
        assert {"privileged", "allowPrivilegeEscalation != false", "unrestricted capabilities"} <= problems
