"""Job and pod status read as the InternVLFinetune's phase, reason and message."""

from internvl_operator.job_status import JobState, job_state, needs_pods


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


def pod(name, *, scheduled=None, waiting=None, terminated=None, last_terminated=None):
    container = {"name": "pytorch", "state": {}, "lastState": {}}
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
