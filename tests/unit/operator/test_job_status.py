"""Job and pod status read as the InternVLFinetune's phase, reason and message."""

from internvl_operator.job_status import JobState, job_state, needs_pods, trainjob_needs_pods, trainjob_state


def job(*true_conditions, suspend=False):
    return {
        "spec": {"runPolicy": {"suspend": suspend}},
        "status": {
            "conditions": [
                {"type": "Created", "status": "True", "reason": "PyTorchJobCreated", "message": "created"},
                *[{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in true_conditions],
                {"type": "Restarting", "status": "False", "reason": "x", "message": ""},
            ]
        },
    }


def pod(name, *, container="pytorch", scheduled=None, waiting=None, terminated=None, last_terminated=None):
    container = {"name": container, "state": {}, "lastState": {}}
    if waiting:
        container["state"]["waiting"] = {"reason": waiting, "message": "back-off pulling image"}
    if terminated:
        container["state"]["terminated"] = terminated
    if last_terminated:
        container["lastState"]["terminated"] = last_terminated
    status = {"containerStatuses": [container]}
    if scheduled:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduled}
        ]
    return {"metadata": {"name": name}, "status": status}


def test_created_job_is_pending():
    assert job_state(job(), []) == JobState("Pending", "JobPending", "waiting for the job's pods to start")


def test_running_and_succeeded():
    assert job_state(job(("Running", "PyTorchJobRunning", "running")), []).phase == "Running"
    done = job(("Running", "PyTorchJobRunning", ""), ("Succeeded", "PyTorchJobSucceeded", "job succeeded"))
    assert job_state(done, []) == JobState("Succeeded", "JobSucceeded", "job succeeded")


def test_unschedulable_pods_explain_a_pending_job():
    pods = [pod("ft-a1-master-0", scheduled="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")]
    assert job_state(job(), pods) == JobState(
        "Pending", "Unschedulable", "pod ft-a1-master-0: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    )


def test_image_pull_back_off():
    state = job_state(job(), [pod("ft-a1-master-0", waiting="ImagePullBackOff")])
    assert (state.phase, state.reason) == ("Pending", "ImagePullBackOff")
    assert state.message == "pod ft-a1-master-0, container pytorch: back-off pulling image"


def test_oom_killed_explains_a_failure():
    failed = job(("Failed", "PyTorchJobFailed", "PyTorchJob ft-a1 is failed because 1 Master replica(s) failed."))
    pods = [pod("ft-a1-master-0", terminated={"exitCode": 137, "reason": "OOMKilled"})]
    assert job_state(failed, pods) == JobState(
        "Failed",
        "OOMKilled",
        "pod ft-a1-master-0, container pytorch ran out of memory; "
        "PyTorchJob ft-a1 is failed because 1 Master replica(s) failed.",
    )


def test_bad_input_is_not_retryable():
    failed = job(("Failed", "PyTorchJobFailed", "failed"))
    pods = [pod("ft-a1-worker-0", terminated={"exitCode": 1}), pod("ft-a1-master-0", terminated={"exitCode": 2})]
    assert job_state(failed, pods) == JobState(
        "Failed", "InvalidInput", "the trainer in pod ft-a1-master-0 refused its input", retryable=False
    )


def test_a_plain_failure_keeps_the_jobs_reason():
    state = job_state(job(("Failed", "MPIJobFailed", "launcher failed")), [])
    assert state == JobState("Failed", "MPIJobFailed", "launcher failed", retryable=True)


def test_suspended_by_kueue_or_by_the_spec():
    assert job_state(job(("Suspended", "PyTorchJobSuspended", "suspended by kueue")), []).phase == "Suspended"
    assert job_state(job(suspend=True), []) == JobState("Suspended", "JobSuspended", "")


def test_pods_are_read_only_while_they_can_explain_something():

    assert needs_pods(job()) and needs_pods(job(("Failed", "PyTorchJobFailed", "")))
    assert not needs_pods(job(("Running", "PyTorchJobRunning", "")))
    assert not needs_pods(job(("Succeeded", "PyTorchJobSucceeded", "")))


def trainjob(*conditions, node=None, suspend=False):
    """A TrainJob as the Trainer controller writes it: metav1 conditions (Complete and Failed copied
    from the JobSet), and per replicated job the JobSet's counts of child Jobs."""
    status = {
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": "2026-12-06T18:00:00Z"}
            for t, s, r, m in conditions
        ]
    }
    if node is not None:
        counts = dict(zip(("ready", "succeeded", "failed", "active", "suspended"), node, strict=True))
        status["jobsStatus"] = [{"name": "node", **counts}]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "spec": {"runtimeRef": {"name": "internvl-torch"}, "suspend": suspend},
        "status": status,
    }


RESUMED = ("Suspended", "False", "Resumed", "TrainJob is resumed")
COMPLETE = ("Complete", "True", "AllJobsCompleted", "jobset completed successfully")
FAILED = (
    "Failed",
    "True",
    "FailedJobs",
    "jobset failed due to one or more job failures (first failed job: ft-a1-node-0)",
)


def test_a_trainjob_runs_once_every_pod_of_its_node_job_is_ready():
    starting = trainjob(RESUMED, node=(0, 0, 0, 1, 0))
    assert trainjob_state(starting, []) == JobState("Pending", "JobPending", "waiting for the job's pods to start")
    assert trainjob_needs_pods(starting)
    ready = trainjob(RESUMED, node=(1, 0, 0, 1, 0))
    assert trainjob_state(ready, []) == JobState("Running", "JobRunning", "every pod of the node job is ready")
    assert not trainjob_needs_pods(ready)


def test_a_trainjob_with_an_unready_node_job_or_no_node_job_is_pending():
    one_of_two_ready = trainjob(node=(1, 0, 0, 2, 0))
    assert trainjob_state(one_of_two_ready, []).phase == "Pending"
    assert trainjob_state(trainjob(), []).phase == "Pending"
    assert trainjob_state({"spec": {}}, []).phase == "Pending"


def test_a_complete_trainjob_succeeded():
    done = trainjob(RESUMED, COMPLETE, node=(0, 1, 0, 0, 0))
    assert trainjob_state(done, []) == JobState("Succeeded", "JobSucceeded", "jobset completed successfully")
    assert not trainjob_needs_pods(done)


def test_a_failed_trainjob_keeps_the_jobsets_reason():
    failed = trainjob(FAILED, node=(0, 0, 1, 0, 0))
    assert trainjob_state(failed, []) == JobState("Failed", "FailedJobs", FAILED[3], retryable=True)
    assert trainjob_needs_pods(failed)
    deadline = trainjob(("Failed", "True", "DeadlineExceeded", "TrainJob exceeded its activeDeadlineSeconds"))
    assert trainjob_state(deadline, []).reason == "DeadlineExceeded"


def test_oom_killed_and_bad_input_explain_a_failed_trainjob():
    failed = trainjob(FAILED, node=(0, 0, 1, 0, 0))
    oom = [pod("ft-a1-node-0-0-x", container="node", terminated={"exitCode": 137, "reason": "OOMKilled"})]
    assert trainjob_state(failed, oom) == JobState(
        "Failed", "OOMKilled", f"pod ft-a1-node-0-0-x, container node ran out of memory; {FAILED[3]}"
    )
    bad_input = [pod("ft-a1-node-0-1-y", container="node", terminated={"exitCode": 2})]
    assert trainjob_state(failed, bad_input) == JobState(
        "Failed", "InvalidInput", "the trainer in pod ft-a1-node-0-1-y refused its input", retryable=False
    )


def test_pods_explain_a_pending_trainjob():
    pending = trainjob(RESUMED, node=(0, 0, 0, 1, 0))
    unschedulable = [pod("ft-a1-node-0-0-x", scheduled="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")]
    assert trainjob_state(pending, unschedulable) == JobState(
        "Pending", "Unschedulable", "pod ft-a1-node-0-0-x: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    )
    pulling = [pod("ft-a1-node-0-0-x", container="node", waiting="ImagePullBackOff")]
    assert trainjob_state(pending, pulling) == JobState(
        "Pending", "ImagePullBackOff", "pod ft-a1-node-0-0-x, container node: back-off pulling image"
    )


def test_a_trainjob_suspended_by_kueue_or_by_its_spec():
    by_kueue = trainjob(("Suspended", "True", "Suspended", "TrainJob is suspended"), node=(0, 0, 0, 0, 1), suspend=True)
    assert trainjob_state(by_kueue, []) == JobState("Suspended", "Suspended", "TrainJob is suspended")
    assert not trainjob_needs_pods(by_kueue)
    not_yet_seen = trainjob(suspend=True)
    assert trainjob_state(not_yet_seen, []) == JobState("Suspended", "JobSuspended", "")
    # A PyTorchJob's suspend field means nothing on a TrainJob.
    assert trainjob_state({"spec": {"runPolicy": {"suspend": True}}}, []).phase == "Pending"


def test_a_trainjob_whose_runtime_is_missing_waits_for_it():
    missing = trainjob(("Failed", "True", "TrainingRuntimeNotSupported", "unsupported runtime"))
    missing["spec"]["runtimeRef"] = {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "x"}
    assert trainjob_state(missing, []) == JobState(
        "Pending",
        "TrainingRuntimeNotSupported",
        "unsupported runtime; install the ClusterTrainingRuntime x (the chart's value trainJob.runtime.install=true): "
        "Trainer then starts the job",
    )
