"""The MPIJob: a launcher running mpirun that forwards the environment by name, and GPU workers."""

import copy

from internvl_operator.render import render
from internvl_operator.render.mpijob import launcher_command
from internvl_operator.render.pod import trainer_env
from tests.unit.operator.render.conftest import context_for, plan_for


def mpijob_of(cr, **kwargs):
    cr = copy.deepcopy(cr)
    cr["spec"]["launcher"] = "mpijob"
    *_, job = render(context_for(cr, **kwargs))
    return job


def test_spec(lora_cr):
    job = mpijob_of(lora_cr, plan=plan_for(nodes=2))
    assert job["apiVersion"] == "kubeflow.org/v2beta1"
    spec = {k: v for k, v in job["spec"].items() if k != "mpiReplicaSpecs"}
    assert spec == {
        "slotsPerWorker": 8,
        "runLauncherAsWorker": False,
        "sshAuthMountPath": "/home/trainer/.ssh",
        "mpiImplementation": "OpenMPI",
        "launcherCreationPolicy": "WaitForWorkersReady",
        "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0, "suspend": False},
    }
    replicas = job["spec"]["mpiReplicaSpecs"]
    assert {k: (v["replicas"], v["restartPolicy"]) for k, v in replicas.items()} == {
        "Launcher": (1, "Never"),
        "Worker": (2, "Never"),
    }


def test_launcher_runs_mpirun_over_every_gpu(lora_cr):
    job = mpijob_of(lora_cr, plan=plan_for(nodes=2))
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    container = launcher["containers"][0]
    forwarded = [
        name for flag, name in zip(container["command"], container["command"][1:], strict=False) if flag == "-x"
    ]
    assert container["command"][:9] == [
        "mpirun",
        "--hostfile",
        "/etc/mpi/hostfile",
        "-np",
        "16",
        "--npernode",
        "8",
        "--bind-to",
        "none",
    ]
    assert container["command"][-4:] == ["internvl-train", "run", "--config", "/etc/internvl/train.yaml"]
    assert forwarded == [
        *[variable["name"] for variable in container["env"]],
        "MASTER_ADDR=charts-lora-a1-worker-0.charts-lora-a1",
        "MASTER_PORT=29500",
    ]
    assert "AWS_SECRET_ACCESS_KEY" in forwarded
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    assert "volumes" not in launcher and "volumeMounts" not in container


def test_workers_hold_the_gpus_and_keep_the_images_sshd(lora_cr):
    worker = mpijob_of(lora_cr)["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    container = worker["containers"][0]
    assert container["name"] == "trainer" and "command" not in container
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert [v["name"] for v in worker["volumes"]] == ["train-config", "scratch", "dshm"]


def openmpi_environment(command, launcher_env):
    """The environment mpirun gives the processes it starts, as OpenMPI builds it from ``-x``:
    in order, ``NAME=VALUE`` as given and ``NAME`` with the launcher's value, each overwriting any
    earlier one (orte/mca/schizo/ompi/schizo_ompi.c, parse_env)."""
    environment = {}
    for flag, argument in zip(command, command[1:], strict=False):
        if flag == "-x":
            name, equals, value = argument.partition("=")
            environment[name] = value if equals else launcher_env[name]
    return environment


def test_the_operators_rendezvous_wins_over_any_variable_of_the_same_name(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = "mpijob"
    context = context_for(cr, plan=plan_for(nodes=2))
    user = [{"name": "MASTER_ADDR", "value": "attacker.example.com"}, {"name": "MASTER_PORT", "value": "1"}]
    for env in ([*user, *trainer_env(context)], [*trainer_env(context), *user]):
        command = launcher_command(context, env)
        launcher_env = {variable["name"]: variable.get("value") for variable in env}
        environment = openmpi_environment(command, launcher_env)
        assert environment["MASTER_ADDR"] == "charts-lora-a1-worker-0.charts-lora-a1"
        assert environment["MASTER_PORT"] == "29500"
        assert "MASTER_ADDR" not in command and "MASTER_PORT" not in command, "never forwarded by name"
