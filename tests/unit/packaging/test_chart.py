"""The Helm chart: lint, render with default and other values, every object valid for Kubernetes
1.32, RBAC exactly the operator's declared permissions, a restricted pod, settings as env."""

from __future__ import annotations

import json
import shutil
import tomllib

import kubernetes_validate
import pytest
import yaml
from pydantic.alias_generators import to_camel, to_snake

from internvl_operator.crd import CRD_FILENAME, crd
from internvl_operator.generators import manifests
from internvl_operator.permissions import OPERATOR_PERMISSIONS
from internvl_operator.render.kubeflow_rules import training_runtime_problems
from internvl_operator.render.runtime import cluster_training_runtime
from internvl_operator.settings import OperatorSettings
from tests.conftest import REPO
from tests.unit.operator.render.conftest import pod_templates, schema_errors
from tests.unit.packaging.conftest import CHART, KUBERNETES_VERSION, by_kind, one, render, run_helm
from tests.unit.pod_security import restricted_violations

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

# A value for every OperatorSettings field, none of them the default.
NON_DEFAULT_SETTINGS = {
    "trainerImage": "registry.example.com/ml/internvl-trainer:1.2.3",
    "imagePullPolicy": "Always",
    "defaultStorageEndpoint": "http://minio.minio.svc:9000",
    "defaultCredentialsSecret": "s3-credentials",
    "shmSizeLimit": "64Gi",
    "scratchSizeLimit": "1Ti",
    "cpuPerGpu": 12,
    "masterPort": 29600,
    "sshAuthMountPath": "/home/mpiuser/.ssh",
    "launcherCpu": "500m",
    "launcherMemory": "1Gi",
    "allowHostNetwork": True,
}

# Every value set to something other than its default.
EVERYTHING = {
    "image": {"repository": "registry.example.com/ml/internvl-operator", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry-credentials"}],
    "watchNamespaces": ["team-a", "team-b"],
    "crds": {"install": True, "annotations": {"argocd.argoproj.io/sync-options": "ServerSideApply=true"}},
    "trainJob": {"runtime": {"install": True}},
    "serviceAccount": {
        "create": True,
        "name": "finetune-operator",
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/finetune"},
    },
    "settings": NON_DEFAULT_SETTINGS,
    "logFormat": "plain",
    "verbose": True,
    "metrics": {
        "enabled": True,
        "port": 9100,
        "service": {"enabled": True, "type": "ClusterIP", "annotations": {"team": "ml"}},
        "serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "5s", "labels": {"release": "prom"}},
    },
    "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
    "podAnnotations": {"example.com/owner": "ml-platform"},
    "podLabels": {"team": "ml-platform"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]}
                ]
            }
        }
    },
    "priorityClassName": "system-cluster-critical",
}

# Kinds that Kubernetes' own schemas do not know; checked field by field below.
NOT_BUILT_IN = {"ServiceMonitor", "ClusterTrainingRuntime"}


@pytest.fixture(scope="module")
def default(helm):
    return render(helm)


@pytest.fixture(scope="module")
def everything(helm, tmp_path_factory):
    return render(helm, EVERYTHING, tmp_path=tmp_path_factory.mktemp("everything"))


def deployment_container(documents):
    [container] = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(documents) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in deployment_container(documents)["env"]}


def flat_rules(rules) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


DECLARED = {(group, resource, verb) for group, resource, verbs in OPERATOR_PERMISSIONS for verb in verbs}


def test_helm_is_the_pinned_version(helm):
    assert run_helm(helm, "version", "--short").stdout.startswith("v3.17.2+")


def test_chart_and_operator_share_the_project_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == VERSION


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["default", "everything"])
def test_lint_strict(helm, tmp_path, values):
    args = ["lint", "--strict", str(CHART)]
    if values is not None:
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["--values", str(tmp_path / "values.yaml")]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rendering", ["default", "everything"])
def test_every_object_is_valid_for_kubernetes(rendering, request):
    documents = request.getfixturevalue(rendering)
    for document in documents:
        if document["kind"] not in NOT_BUILT_IN:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_default_rendering_watches_every_namespace_with_a_cluster_role(default):
    assert sorted(d["kind"] for d in default) == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"]
    )
    assert "-A" in deployment_container(default)["args"]
    assert "-n" not in deployment_container(default)["args"]


def test_values_validate_against_the_schema():
    """The chart's own defaults obey its schema (helm checks user values against it)."""
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(VALUES)
    jsonschema.Draft7Validator(schema).validate(EVERYTHING)


# CRD ------------------------------------------------------------------------------------------


def test_chart_crd_template_is_fresh():
    assert (REPO / manifests.CHART_CRD).read_text() == manifests.chart_crd_template(), (
        f"{manifests.CHART_CRD} is stale: run `make manifests`"
    )


def test_rendered_crd_is_the_crd_of_crds_folder_kept_on_uninstall(default):
    rendered = one(default, "CustomResourceDefinition")
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    bare = {**rendered, "metadata": {"name": rendered["metadata"]["name"]}}
    assert bare == crd() == yaml.safe_load((REPO / "crds" / CRD_FILENAME).read_text())


def test_crd_takes_extra_annotations(everything):
    assert one(everything, "CustomResourceDefinition")["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep",
        "argocd.argoproj.io/sync-options": "ServerSideApply=true",
    }


def test_crds_install_false_leaves_the_crd_out(helm):
    assert by_kind(render(helm, None, "--set", "crds.install=false"), "CustomResourceDefinition") == []


# ClusterTrainingRuntime -----------------------------------------------------------------------


def test_chart_runtime_template_is_fresh():
    assert (REPO / manifests.CHART_RUNTIME).read_text() == manifests.chart_runtime_template(), (
        f"{manifests.CHART_RUNTIME} is stale: run `make manifests`"
    )


def test_runtime_is_off_by_default(default):
    assert by_kind(default, "ClusterTrainingRuntime") == []


def test_runtime_with_default_settings_is_the_operators(helm):
    [runtime] = by_kind(render(helm, None, "--set", "trainJob.runtime.install=true"), "ClusterTrainingRuntime")
    expected = cluster_training_runtime(OperatorSettings())
    assert runtime["metadata"]["name"] == expected["metadata"]["name"]
    assert (
        runtime["metadata"]["labels"].items()
        >= {
            "trainer.kubeflow.org/framework": "torch",
            "app.kubernetes.io/managed-by": "Helm",
        }.items()
    )
    assert runtime["spec"] == expected["spec"]


def test_runtime_takes_the_settings_values_and_is_valid(everything):
    runtime = one(everything, "ClusterTrainingRuntime")
    expected = cluster_training_runtime(OperatorSettings(**{to_snake(k): v for k, v in NON_DEFAULT_SETTINGS.items()}))
    assert runtime["spec"] == expected["spec"]
    assert schema_errors(runtime) == [] and training_runtime_problems(runtime) == []
    assert restricted_violations(pod_templates(runtime)["node"]) == []


# RBAC -----------------------------------------------------------------------------------------


def test_cluster_role_grants_exactly_the_declared_permissions(default):
    role = one(default, "ClusterRole")
    assert flat_rules(role["rules"]) == DECLARED
    binding = one(default, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = one(default, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": "internvl-system"}]
    assert one(default, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]


@pytest.mark.parametrize("rendering", ["default", "everything"])
def test_no_rule_has_a_wildcard_or_grants_more(rendering, request):
    documents = request.getfixturevalue(rendering)
    for document in by_kind(documents, "ClusterRole") + by_kind(documents, "Role"):
        for rule in document["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule


def test_named_namespaces_get_a_role_each_and_nothing_cluster_wide(everything):
    assert by_kind(everything, "ClusterRole") == [] and by_kind(everything, "ClusterRoleBinding") == []
    roles = {role["metadata"]["namespace"]: role for role in by_kind(everything, "Role")}
    bindings = {binding["metadata"]["namespace"]: binding for binding in by_kind(everything, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for namespace, role in roles.items():
        assert flat_rules(role["rules"]) == DECLARED
        assert bindings[namespace]["roleRef"]["name"] == role["metadata"]["name"]
        assert bindings[namespace]["subjects"] == [
            {"kind": "ServiceAccount", "name": "finetune-operator", "namespace": "internvl-system"}
        ]
    args = deployment_container(everything)["args"]
    assert "-A" not in args
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "-n"] == ["team-a", "team-b"]


def test_watch_namespaces_null_means_every_namespace(helm):
    """hack/kind-e2e.sh installs with --set watchNamespaces=null."""
    documents = render(helm, None, "--set", "watchNamespaces=null")
    assert "-A" in deployment_container(documents)["args"]
    assert len(by_kind(documents, "ClusterRole")) == 1


def test_rbac_and_service_account_can_be_left_to_others(helm):
    settings = ["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=x"]
    documents = render(helm, None, *(arg for setting in settings for arg in ("--set", setting)))
    assert {d["kind"] for d in documents} == {"CustomResourceDefinition", "Deployment"}
    assert one(documents, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "x"
    refused = run_helm(helm, "template", "r", str(CHART), "--set", "serviceAccount.create=false")
    assert refused.returncode != 0 and "serviceAccount.name" in refused.stderr


# Deployment -----------------------------------------------------------------------------------


def test_one_replica_replaced_by_recreate_standalone_with_liveness(default):
    deployment = one(default, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment_container(default)
    args = container["args"]
    assert args[:4] == ["run", "--standalone", "--liveness", "http://0.0.0.0:8080/healthz"]
    assert args[args.index("--metrics-port") + 1] == "9090"
    assert args[args.index("--log-format") + 1] == "json"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    assert container["image"] == f"ghcr.io/internvl-finetune/operator:{VERSION}"


def test_arguments_are_those_the_operator_accepts(default, everything):
    from internvl_operator.cli import parser

    for documents in (default, everything):
        args = parser().parse_args(deployment_container(documents)["args"])
        assert args.command == "run" and args.standalone


@pytest.mark.parametrize("rendering", ["default", "everything"])
def test_pod_meets_the_restricted_security_profile(rendering, request):
    template = one(request.getfixturevalue(rendering), "Deployment")["spec"]["template"]
    assert restricted_violations(template) == []
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context.get("privileged", False) is False
    assert "hostNetwork" not in pod and "hostPID" not in pod
    assert {volume["name"]: volume for volume in pod["volumes"]}["tmp"]["emptyDir"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_resources_are_requested_and_memory_is_limited(default):
    resources = deployment_container(default)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_scheduling_and_image_values_reach_the_pod(everything):
    pod = one(everything, "Deployment")["spec"]["template"]
    spec = pod["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert spec[key] == EVERYTHING[key], key
    assert pod["metadata"]["annotations"] == EVERYTHING["podAnnotations"]
    assert pod["metadata"]["labels"]["team"] == "ml-platform"
    container = deployment_container(everything)
    assert container["image"] == "registry.example.com/ml/internvl-operator:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == EVERYTHING["resources"]
    assert "--verbose" in container["args"]
    account = one(everything, "ServiceAccount")["metadata"]
    assert account["annotations"] == EVERYTHING["serviceAccount"]["annotations"]


# Settings -------------------------------------------------------------------------------------


def test_settings_values_name_every_operator_setting():
    names = {to_camel(name) for name in OperatorSettings.model_fields}
    assert set(VALUES["settings"]) == names
    assert set(NON_DEFAULT_SETTINGS) == names


def test_settings_defaults_are_the_operators():
    for name, field in OperatorSettings.model_fields.items():
        value = VALUES["settings"][to_camel(name)]
        if value == "":
            # Empty: the operator's own default, which is None or depends on its version.
            assert field.default is None or name == "trainer_image", name
        else:
            assert value == field.default, name


def test_values_schema_settings_section_is_fresh():
    current = (CHART / "values.schema.json").read_text()
    assert manifests.values_schema_json(current) == current, "values.schema.json is stale: run `make manifests`"


def test_default_env_leaves_unset_settings_to_the_operator(default, monkeypatch):
    env = env_of(default)
    assert "INTERNVL_OPERATOR_TRAINER_IMAGE" not in env
    assert "INTERNVL_OPERATOR_DEFAULT_STORAGE_ENDPOINT" not in env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert OperatorSettings() == OperatorSettings.model_construct()
    assert OperatorSettings().trainer_image == f"ghcr.io/internvl-finetune/trainer:{VERSION}"


def test_every_setting_reaches_the_operator_as_its_env_variable(everything, monkeypatch):
    env = env_of(everything)
    assert set(env) == {f"INTERNVL_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    for name in OperatorSettings.model_fields:
        assert getattr(settings, name) == NON_DEFAULT_SETTINGS[to_camel(name)], name


@pytest.mark.parametrize(
    "setting",
    [
        "replicaCount=2",
        "metrics.port=0",
        "settings.cpuPerGpu=0",
        "settings.imagePullPolicy=Sometimes",
        "settings.shmSizeLimit=lots",
        "settings.defaultCredentialsSecret=Not_A_Name",
        "settings.unknownSetting=1",
        "settings.allowHostNetwork=sometimes",
        "watchNamespaces={Team_A}",
        "logFormat=xml",
    ],
)
def test_schema_refuses_bad_values(helm, setting):
    result = run_helm(helm, "template", "r", str(CHART), "--set", setting)
    assert result.returncode != 0, setting
    assert "values don't meet the specifications of the schema" in result.stderr


# Metrics --------------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_service(everything):
    service = one(everything, "Service")
    monitor = one(everything, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 9100, "metrics")
    pod_labels = one(everything, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_metrics_can_be_turned_off(helm):
    documents = render(helm, None, "--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true")
    assert "--metrics-port" not in deployment_container(documents)["args"]
    assert by_kind(documents, "Service") == [] and by_kind(documents, "ServiceMonitor") == []


# NOTES.txt ------------------------------------------------------------------------------------


def test_notes_render(helm, tmp_path):
    """helm template leaves NOTES.txt out; a probe template in a copy of the chart includes it."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: {{ include "internvl-operator/templates/NOTES.txt" . | toJson }}\n'
    )
    [default] = manifests.helm_template(helm, chart, "--show-only", "templates/zz-notes.yaml")
    assert "every namespace" in default["notes"] and "helm.sh/resource-policy: keep" in default["notes"]
    [named] = manifests.helm_template(
        helm,
        chart,
        "--show-only",
        "templates/zz-notes.yaml",
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "crds.install=false",
        "--set",
        "settings.defaultCredentialsSecret=s3-credentials",
    )
    assert "team-a, team-b" in named["notes"]
    assert "kubectl apply --server-side -f crds/" in named["notes"]
    assert '"s3-credentials"' in named["notes"]
