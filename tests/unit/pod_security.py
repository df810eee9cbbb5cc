"""The "restricted" Pod Security Standard as a check on a pod template, for the tests.

Mirrors the checks of Kubernetes' PodSecurity admission (k8s.io/pod-security-admission/policy,
https://kubernetes.io/docs/concepts/security/pod-security-standards/) at the latest version, every
baseline control and every restricted one, with the reasons it gives. Containers are the
containers, initContainers and ephemeralContainers of the pod, as the admission visits them. Not
modelled: the exemptions of Windows pods (``spec.os.name: windows``) and the relaxation for
pods in a user namespace (``hostUsers: false``); the pods checked here use neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Baseline: capabilities a container may add beyond the container runtime's defaults.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
# Sysctls that are namespaced and isolated from other pods (1.0, 1.27, 1.29 and 1.32 additions).
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Restricted: the only inline volume sources a pod may use.
RESTRICTED_VOLUME_SOURCES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for field in ("containers", "initContainers", "ephemeralContainers"):
        yield from spec.get(field) or []


def _context(container: dict[str, Any]) -> dict[str, Any]:
    return container.get("securityContext") or {}


def _at(node: dict[str, Any] | None, *keys: str) -> Any:
    """The value under a path of keys, None where any of them is missing or null."""
    for key in keys:
        node = (node or {}).get(key)
    return node


def baseline_violations(template: dict[str, Any]) -> list[str]:
    """Every baseline control a pod template breaks, as '<control>: <detail>'."""
    metadata, spec = template.get("metadata") or {}, template.get("spec") or {}
    pod = spec.get("securityContext") or {}
    containers = list(_containers(spec))
    problems = []
    if _at(pod, "windowsOptions", "hostProcess") or any(
        _at(c, "securityContext", "windowsOptions", "hostProcess") for c in containers
    ):
        problems.append("hostProcess: pod and containers must not set windowsOptions.hostProcess=true")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"host namespaces: {field}=true")
    problems += [f"privileged: container {c['name']!r}" for c in containers if _context(c).get("privileged")]
    for c in containers:
        added = set(_at(c, "securityContext", "capabilities", "add") or []) - BASELINE_CAPABILITIES
        if added:
            problems.append(f"non-default capabilities: container {c['name']!r} adds {sorted(added)}")
    problems += [f"hostPath volumes: {v['name']!r}" for v in spec.get("volumes") or [] if "hostPath" in v]
    for c in containers:
        ports = [p["hostPort"] for p in c.get("ports") or [] if p.get("hostPort")]
        if ports:
            problems.append(f"hostPort: container {c['name']!r} uses {ports}")
    for c in containers:
        handlers = [(probe,) for probe in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += [("lifecycle", hook) for hook in ("postStart", "preStop")]
        for where in handlers:
            for handler in ("httpGet", "tcpSocket"):
                if _at(c, *where, handler, "host"):
                    path = ".".join((*where, handler, "host"))
                    problems.append(f"probe or lifecycle host: container {c['name']!r} sets {path}")
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and value and value != "runtime/default":
            if not value.startswith("localhost/"):
                problems.append(f"forbidden AppArmor profile: {key}={value!r}")
    for owner, context in [("pod", pod), *((f"container {c['name']!r}", _context(c)) for c in containers)]:
        profile = context.get("appArmorProfile")
        if profile is not None and profile.get("type") not in APPARMOR_TYPES:
            problems.append(f"forbidden AppArmor profile: {owner} sets appArmorProfile.type {profile.get('type')!r}")
        options = context.get("seLinuxOptions") or {}
        if (options.get("type") or "") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            problems.append(f"seLinuxOptions: {owner} sets {options}")
        seccomp = context.get("seccompProfile")
        if _at(seccomp, "type") == "Unconfined":
            problems.append(f"seccompProfile: {owner} sets type Unconfined")
    for c in containers:
        if _context(c).get("procMount") not in (None, "Default"):
            problems.append(f"procMount: container {c['name']!r} sets {_context(c)['procMount']!r}")
    for sysctl in pod.get("sysctls") or []:
        if sysctl["name"].replace("/", ".") not in SAFE_SYSCTLS:
            problems.append(f"forbidden sysctls: {sysctl['name']}")
    return problems


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """Every control of the "restricted" standard (baseline included) a pod template breaks."""
    spec = template.get("spec") or {}
    pod = spec.get("securityContext") or {}
    containers = list(_containers(spec))
    # Restricted controls that replace a baseline one, as the admission's overrides do.
    replaced = ("hostPath volumes:", "non-default capabilities:", "seccompProfile:")
    problems = [p for p in baseline_violations(template) if not p.startswith(replaced)]
    for v in spec.get("volumes") or []:
        sources = set(v) - {"name"}
        if not sources & RESTRICTED_VOLUME_SOURCES:
            problems.append(f"restricted volume types: volume {v['name']!r} uses {sorted(sources)}")
    for c in containers:
        if _context(c).get("allowPrivilegeEscalation") is not False:
            problems.append(f"allowPrivilegeEscalation != false: container {c['name']!r}")
    if pod.get("runAsNonRoot") is False:
        problems.append("runAsNonRoot != true: pod sets runAsNonRoot=false")
    for c in containers:
        own = _context(c).get("runAsNonRoot")
        if own is False or (own is None and pod.get("runAsNonRoot") is not True):
            problems.append(f"runAsNonRoot != true: container {c['name']!r}")
    if pod.get("runAsUser") == 0 or any(_context(c).get("runAsUser") == 0 for c in containers):
        problems.append("runAsUser=0: pod or a container runs as root")
    pod_seccomp = _at(pod, "seccompProfile", "type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        problems.append(f"seccompProfile: pod sets type {pod_seccomp!r}")
    for c in containers:
        own = _at(c, "securityContext", "seccompProfile", "type")
        if (own is not None and own not in SECCOMP_TYPES) or (own is None and pod_seccomp not in SECCOMP_TYPES):
            problems.append(f"seccompProfile: container {c['name']!r} must be RuntimeDefault or Localhost")
    for c in containers:
        capabilities = _context(c).get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"unrestricted capabilities: container {c['name']!r} must drop ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"unrestricted capabilities: container {c['name']!r} adds {sorted(added)}")
    return problems
