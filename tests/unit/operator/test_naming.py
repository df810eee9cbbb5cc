"""Child names: deterministic, distinct, and valid DNS-1035 labels with every launcher's pod suffixes."""

import hashlib
import re

from hypothesis import given
from hypothesis import strategies as st

from internvl_operator import naming
from internvl_operator.planner import MAX_GPUS

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Object names are DNS-1123 subdomains: dot-separated labels, at most 253 characters.
SUBDOMAINS = st.from_regex(
    r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?){0,10}", fullmatch=True
)


def test_a_short_valid_name_is_kept():
    assert naming.stem("charts-lora") == "charts-lora"
    assert naming.job_name("charts-lora", 1) == "charts-lora-a1"
    assert naming.train_config_name("charts-lora", 2) == "charts-lora-a2-train"
    assert naming.trainer_account_name("charts-lora") == "charts-lora-trainer"


def test_a_long_name_is_cut_and_keeps_a_hash_of_the_whole():
    name = "a" * 40
    assert naming.stem(name) == name
    longer = "a" * 41
    assert naming.stem(longer) == "a" * 31 + "-" + hashlib.sha256(longer.encode()).hexdigest()[:8]
    assert len(naming.stem(longer)) == naming.STEM_MAX == 40


def test_the_stem_leaves_room_for_the_longest_pod_name_of_every_launcher():
    # A TrainJob's JobSet names its last pod "<job>-node-0-4095-<5 random>", longer than
    # Kubeflow v1's last worker "<job>-worker-4095".
    assert naming.longest_pod_names("j") == ("j-worker-4095", "j-node-0-4095-abcde")
    assert naming.POD_SUFFIX_ROOM == len("-node-0-4095-abcde") == 18
    assert naming.MOST_NODES >= MAX_GPUS, "a node has at least one GPU"


def test_names_that_differ_after_the_cut_get_different_stems():
    base = "team-vision-finetune-internvl3-78b-full-experiment-"
    assert naming.stem(base + "one") != naming.stem(base + "two")


def test_dots_and_leading_digits_become_a_label():
    assert naming.stem("v1.2-run") == "v1-2-run-" + naming.stem("v1.2-run")[-8:]
    assert naming.stem("7b-run").startswith("ivft-7b-run-")


@given(SUBDOMAINS, st.integers(1, 101))
def test_every_name_gives_valid_pod_names_for_any_attempt(name, attempt):
    job = naming.job_name(name, attempt)
    for pod in (f"{job}-master-0", f"{job}-launcher", *naming.longest_pod_names(job)):
        assert DNS_1035.match(pod) and len(pod) <= 63, pod
    assert naming.job_name(name, attempt) == job
