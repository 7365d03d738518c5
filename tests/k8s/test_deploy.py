"""examples/deploy: every manifest parses, and names, ports, paths, flags and chart values agree
across the files and with each program's own --help (for the programs built in this tree:
GPUSLICE_EXTENDER, GPUSLICE_WEBHOOK, GPUSLICE_DEVICE_PLUGIN, GPUSLICE_MONITOR; a program not
named is checked against the files only)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "examples" / "deploy"
PROGRAMS = {
    "gpuslice_extender": os.environ.get("GPUSLICE_EXTENDER", ""),
    "gpuslice_webhook": os.environ.get("GPUSLICE_WEBHOOK", ""),
    "gpuslice-device-plugin": os.environ.get("GPUSLICE_DEVICE_PLUGIN", ""),
    "gpuslice-monitor": os.environ.get("GPUSLICE_MONITOR", ""),
}


def load_all() -> list[dict]:
    docs = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d is not None:
                d["__file"] = f.name
                docs.append(d)
    return docs


DOCS = load_all()


def objects(kind: str) -> list[dict]:
    return [d for d in DOCS if d["kind"] == kind]


def one(kind: str, name: str) -> dict:
    found = [d for d in objects(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def containers() -> list[tuple[dict, dict]]:
    """(workload, container) for every container of every Deployment and DaemonSet."""
    out = []
    for w in objects("Deployment") + objects("DaemonSet"):
        spec = w["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            out.append((w, c))
    return out


def container(program: str) -> tuple[dict, dict]:
    found = [(w, c) for w, c in containers() if c.get("command", [""])[0] == program]
    assert len(found) == 1, program
    return found[0]


def flags(c: dict) -> dict[str, str]:
    """--flag value pairs of a container's command (a flag followed by another is boolean)."""
    cmd = c["command"][1:]
    out = {}
    i = 0
    while i < len(cmd):
        a = cmd[i]
        assert a.startswith("--"), f"{c['name']}: {a} is not a flag"
        if "=" in a:
            k, v = a.split("=", 1)
            out[k] = v
        elif i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
            out[a] = cmd[i + 1]
            i += 1
        else:
            out[a] = "true"
        i += 1
    return out


CONFIG = one("ConfigMap", "gpuslice-config")["data"]
SCHED_CONFIG = yaml.safe_load(
    one("ConfigMap", "gpuslice-scheduler-config")["data"]["scheduler-config.yaml"])


def test_every_manifest_parses_and_names_a_namespace_that_exists():
    assert {d["__file"] for d in DOCS} == {"namespace.yaml", "configmap.yaml", "scheduler.yaml",
                                           "webhook.yaml", "node.yaml"}
    namespaces = {d["metadata"]["name"] for d in objects("Namespace")}
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                      "MutatingWebhookConfiguration"}
    for d in DOCS:
        assert d["apiVersion"] and d["metadata"]["name"], d["__file"]
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace") in namespaces, (d["kind"], d["metadata"])


def test_rbac_subjects_roles_and_service_accounts_agree():
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"])
                for d in objects("ServiceAccount")}
    roles = {d["metadata"]["name"] for d in objects("ClusterRole")}
    for b in objects("ClusterRoleBinding") + objects("RoleBinding"):
        ref = b["roleRef"]
        if ref["kind"] == "ClusterRole" and not ref["name"].startswith("system:"):
            assert ref["name"] in roles, b["metadata"]["name"]
        if ref["kind"] == "Role":
            one("Role", ref["name"])
        for s in b["subjects"]:
            assert (s["namespace"], s["name"]) in accounts, b["metadata"]["name"]
    for w in objects("Deployment") + objects("DaemonSet"):
        sa = w["spec"]["template"]["spec"]["serviceAccountName"]
        assert (w["metadata"]["namespace"], sa) in accounts
        assert w["spec"]["selector"]["matchLabels"].items() <= \
            w["spec"]["template"]["metadata"]["labels"].items()
    # What the programs do with the API server is allowed.
    rules = one("ClusterRole", "gpuslice-scheduler")["rules"]
    allowed = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    for need in [("nodes", "watch"), ("pods", "watch"), ("pods", "patch"),
                 ("pods/binding", "create"), ("resourcequotas", "watch")]:
        assert need in allowed


def test_the_scheduler_reaches_the_extender_and_names_the_webhooks_scheduler():
    _, ext = container("gpuslice_extender")
    f = flags(ext)
    (extender,) = SCHED_CONFIG["extenders"]
    assert extender["urlPrefix"] == f"http://127.0.0.1:{f['--port']}"
    assert any(p["containerPort"] == int(f["--port"]) for p in ext["ports"])
    svc = one("Service", "gpuslice-scheduler")
    assert svc["spec"]["ports"][0]["targetPort"] == int(f["--port"])
    # The extender's bind deadline is below kube-scheduler's httpTimeout.
    assert int(f["--bind-timeout-ms"]) < int(extender["httpTimeout"].rstrip("s")) * 1000
    _, wh = container("gpuslice_webhook")
    names = {p["schedulerName"] for p in SCHED_CONFIG["profiles"]}
    assert flags(wh)["--scheduler-name"] == CONFIG["schedulerName"]
    assert CONFIG["schedulerName"] in names
    managed = {r["name"] for r in extender["managedResources"]}
    assert managed == {CONFIG["resourceName"], CONFIG["resourceMem"],
                       CONFIG["resourceMemPercentage"], CONFIG["resourceCores"]}
    # The kube-scheduler container reads the config where the ConfigMap is mounted.
    w, ks = [(w, c) for w, c in containers() if c["name"] == "kube-scheduler"][0]
    path = [a.split("=", 1)[1] for a in ks["command"] if a.startswith("--config=")][0]
    mount = [m for m in ks["volumeMounts"] if path.startswith(m["mountPath"] + "/")][0]
    vol = [v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]][0]
    assert vol["configMap"]["name"] == "gpuslice-scheduler-config"
    assert Path(path).name in one("ConfigMap", "gpuslice-scheduler-config")["data"]


def test_chart_values_agree_with_every_programs_flags():
    expect = {
        "--node-policy": CONFIG["nodeSchedulerPolicy"], "--gpu-policy": CONFIG["gpuSchedulerPolicy"],
        "--resource-name": CONFIG["resourceName"], "--resource-mem": CONFIG["resourceMem"],
        "--resource-mem-percentage": CONFIG["resourceMemPercentage"],
        "--resource-cores": CONFIG["resourceCores"], "--resource-priority": CONFIG["resourcePriority"],
        "--default-gpu-num": CONFIG["defaultGPUNum"], "--default-mem": CONFIG["defaultMem"],
        "--default-cores": CONFIG["defaultCores"], "--memory-factor": CONFIG["memoryFactor"],
        "--device-split-count": CONFIG["deviceSplitCount"],
    }
    seen = 0
    for _, c in containers():
        for flag, value in flags(c).items() if c.get("command", [""])[0] in PROGRAMS else []:
            if flag in expect:
                assert value == expect[flag], (c["name"], flag)
                seen += 1
    assert seen >= 20
    import json
    dev = json.loads(CONFIG["device-config.json"])["nvidia"]
    assert str(dev["deviceSplitCount"]) == CONFIG["deviceSplitCount"]
    assert dev["resourceCountName"] == CONFIG["resourceName"]
    assert dev["resourceMemoryName"] == CONFIG["resourceMem"]
    assert dev["resourceCoreName"] == CONFIG["resourceCores"]


def test_the_webhook_service_configuration_and_certificate_paths_agree():
    w, c = container("gpuslice_webhook")
    f = flags(c)
    svc = one("Service", "gpuslice-webhook")
    cfg = one("MutatingWebhookConfiguration", "gpuslice-webhook")
    (hook,) = cfg["webhooks"]
    ref = hook["clientConfig"]["service"]
    assert (ref["name"], ref["namespace"]) == (svc["metadata"]["name"],
                                               svc["metadata"]["namespace"])
    port = [p for p in svc["spec"]["ports"] if p["port"] == ref["port"]][0]
    assert port["targetPort"] == int(f["--port"])
    assert any(p["containerPort"] == int(f["--port"]) for p in c["ports"])
    assert ref["path"] == "/mutate"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["failurePolicy"] in ("Fail", "Ignore")
    assert svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
    # The certificate and key are in the mounted Secret.
    mount = [m for m in c["volumeMounts"] if f["--cert"].startswith(m["mountPath"] + "/")][0]
    assert f["--key"].startswith(mount["mountPath"] + "/")
    vol = [v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]][0]
    assert vol["secret"]["secretName"] == "gpuslice-webhook-tls"
    assert "gpuslice-webhook-tls" in (DEPLOY / "README.md").read_text()


def test_node_paths_agree_between_the_plugin_the_exporter_and_the_host():
    ds = one("DaemonSet", "gpuslice-node")
    spec = ds["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    _, dp = container("gpuslice-device-plugin")
    _, mon = container("gpuslice-monitor")
    fd, fm = flags(dp), flags(mon)

    def host_path(c: dict, inside: str) -> str:
        """The host path a path inside container c lands on, through its hostPath mounts."""
        for m in c["volumeMounts"]:
            if (inside == m["mountPath"] or inside.startswith(m["mountPath"] + "/")) \
                    and m["name"] in host:
                return host[m["name"]] + inside[len(m["mountPath"]):]
        raise AssertionError(f"{c['name']}: {inside} is on no hostPath mount")

    # kubelet's device-plugin directory, as a hostPath at the same place.
    assert host_path(dp, fd["--kubelet-dir"]) == "/var/lib/kubelet/device-plugins"
    # The shim, ld.so.preload, the containers' cache directories and the node region: the
    # plugin's host hook path is the host directory itself, the exporter reads its ledgers.
    assert host_path(dp, fd["--host-hook-path"]) == fd["--host-hook-path"]
    assert host_path(mon, fm["--ledger-dir"]) == fd["--host-hook-path"] + "/containers"
    install = [c for c in spec["initContainers"] if c["name"] == "install-shim"][0]
    script = " ".join(install["command"])
    for part in ["libgpuslice.so", "ld.so.preload", "containers", "region"]:
        assert f"{fd['--host-hook-path']}/{part}" in script
    assert host_path(install, fd["--host-hook-path"]) == fd["--host-hook-path"]
    # The exporter's port.
    port = int(fm["--listen"].rsplit(":", 1)[1])
    assert any(p["containerPort"] == port for p in mon["ports"])
    # The device plugin's config file is the ConfigMap's key, mounted.
    cfg_mount = [m for m in dp["volumeMounts"] if fd["--config"].startswith(m["mountPath"] + "/")]
    vol = [v for v in spec["volumes"] if v["name"] == cfg_mount[0]["name"]][0]
    assert vol["configMap"]["name"] == "gpuslice-config"
    assert Path(fd["--config"]).name in {i["path"] for i in vol["configMap"]["items"]}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_flag_in_the_manifests_is_in_the_programs_help(program):
    exe = PROGRAMS[program]
    if not exe:
        pytest.skip(f"{program} not built here")
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30).stdout
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    assert known, help_text
    _, c = container(program)
    for flag in flags(c):
        assert flag in known, f"{program}: {flag} not in its --help"
