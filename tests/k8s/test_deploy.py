"""examples/deploy, as kustomize renders it (`kubectl kustomize`) for the base and every overlay:
each rendering parses, and names, ports, paths, flags and chart values agree across the objects
and with each program's own --help (for the programs built in this tree: GPUSLICE_EXTENDER,
GPUSLICE_WEBHOOK, GPUSLICE_DEVICE_PLUGIN, GPUSLICE_MONITOR; a program not named is checked
against the manifests only). The overlays' own promises (HAMi's names, failing closed), the
webhook's selectors, the extender's NetworkPolicy and the images' tags are checked too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "examples" / "deploy"
VARIANTS = ["base", "overlays/hami", "overlays/fail-closed", "overlays/dra"]
PROGRAMS = {
    "gpuslice_extender": os.environ.get("GPUSLICE_EXTENDER", ""),
    "gpuslice_webhook": os.environ.get("GPUSLICE_WEBHOOK", ""),
    "gpuslice-device-plugin": os.environ.get("GPUSLICE_DEVICE_PLUGIN", ""),
    "gpuslice-monitor": os.environ.get("GPUSLICE_MONITOR", ""),
    "gpuslice-dra-plugin": os.environ.get("GPUSLICE_DRA_PLUGIN", ""),
}
# HAMi's chart defaults (charts/hami/values.yaml; the chart is installed in kube-system).
HAMI = {"namespace": "kube-system", "schedulerName": "hami-scheduler",
        "resourceName": "nvidia.com/gpu", "resourceMem": "nvidia.com/gpumem",
        "resourceMemPercentage": "nvidia.com/gpumem-percentage",
        "resourceCores": "nvidia.com/gpucores", "resourcePriority": "nvidia.com/priority"}


def kustomize(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize DIRECTORY` renders."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.fail("kubectl not found: rendering examples/deploy needs kubectl 1.21 or later "
                    "(kustomize v4+)")
    r = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {directory}: {r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d is not None]


class Manifests:
    """One rendering's objects, looked up by kind and name."""

    def __init__(self, variant: str, docs: list[dict]):
        self.variant = variant
        self.docs = docs
        self.config = self.one("ConfigMap", "gpuslice-config")["data"]
        self.sched_config = yaml.safe_load(
            self.one("ConfigMap", "gpuslice-scheduler-config")["data"]["scheduler-config.yaml"])

    def objects(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict:
        found = [d for d in self.objects(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.variant}: {kind}/{name}: {len(found)} found"
        return found[0]

    def containers(self) -> list[tuple[dict, dict]]:
        """(workload, container) for every container of every Deployment and DaemonSet."""
        out = []
        for w in self.objects("Deployment") + self.objects("DaemonSet"):
            spec = w["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                out.append((w, c))
        return out

    def container(self, program: str) -> tuple[dict, dict]:
        found = [(w, c) for w, c in self.containers() if c.get("command", [""])[0] == program]
        assert len(found) == 1, f"{self.variant}: {program}"
        return found[0]


_RENDERED: dict[str, Manifests] = {}


def rendered(variant: str) -> Manifests:
    if variant not in _RENDERED:
        _RENDERED[variant] = Manifests(variant, kustomize(DEPLOY / variant))
    return _RENDERED[variant]


@pytest.fixture(params=VARIANTS)
def dm(request) -> Manifests:
    """The base or an overlay, rendered once per session."""
    return rendered(request.param)


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


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects an object's labels, as
    the API server decides it (apimachinery's labels.Selector)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        present = key in labels
        if (op == "In" and not (present and labels[key] in values)) or \
                (op == "NotIn" and present and labels[key] in values) or \
                (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def test_the_base_renders_every_manifest_in_its_directory():
    kust = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(
        f.name for f in (DEPLOY / "base").glob("*.yaml") if f.name != "kustomization.yaml")


def test_every_object_names_a_namespace_that_exists(dm):
    # kube-system is the cluster's own; any other namespace is one the manifests create.
    created = {d["metadata"]["name"] for d in dm.objects("Namespace")}
    assert "kube-system" not in created
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                      "MutatingWebhookConfiguration", "DeviceClass"}
    for d in dm.docs:
        assert d["apiVersion"] and d["metadata"]["name"], d
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace") in created | {"kube-system"}, \
                (d["kind"], d["metadata"])


def test_rbac_subjects_roles_and_service_accounts_agree(dm):
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"])
                for d in dm.objects("ServiceAccount")}
    roles = {d["metadata"]["name"] for d in dm.objects("ClusterRole")}
    for b in dm.objects("ClusterRoleBinding") + dm.objects("RoleBinding"):
        ref = b["roleRef"]
        if ref["kind"] == "ClusterRole" and not ref["name"].startswith("system:"):
            assert ref["name"] in roles, b["metadata"]["name"]
        if ref["kind"] == "Role":
            dm.one("Role", ref["name"])
        for s in b["subjects"]:
            assert (s["namespace"], s["name"]) in accounts, b["metadata"]["name"]
    for w in dm.objects("Deployment") + dm.objects("DaemonSet"):
        sa = w["spec"]["template"]["spec"]["serviceAccountName"]
        assert (w["metadata"]["namespace"], sa) in accounts
        assert w["spec"]["selector"]["matchLabels"].items() <= \
            w["spec"]["template"]["metadata"]["labels"].items()
    # What the programs do with the API server is allowed.
    rules = dm.one("ClusterRole", "gpuslice-scheduler")["rules"]
    allowed = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    for need in [("nodes", "watch"), ("pods", "watch"), ("pods", "patch"),
                 ("pods/binding", "create"), ("resourcequotas", "watch")]:
        assert need in allowed


def test_the_scheduler_reaches_the_extender_and_names_the_webhooks_scheduler(dm):
    _, ext = dm.container("gpuslice_extender")
    f = flags(ext)
    (extender,) = dm.sched_config["extenders"]
    assert extender["urlPrefix"] == f"http://127.0.0.1:{f['--port']}"
    assert any(p["containerPort"] == int(f["--port"]) for p in ext["ports"])
    svc = dm.one("Service", "gpuslice-scheduler")
    assert svc["spec"]["ports"][0]["targetPort"] == int(f["--port"])
    # The extender's bind deadline is below kube-scheduler's httpTimeout.
    assert int(f["--bind-timeout-ms"]) < int(extender["httpTimeout"].rstrip("s")) * 1000
    _, wh = dm.container("gpuslice_webhook")
    names = {p["schedulerName"] for p in dm.sched_config["profiles"]}
    assert flags(wh)["--scheduler-name"] == dm.config["schedulerName"]
    assert dm.config["schedulerName"] in names
    # Every pod of the profile goes to the extender (CPU-only pods are placed by its policy),
    # and kube-scheduler leaves the GPU resources to it.
    assert "managedResources" not in extender
    assert extender["weight"] > 10 * 10
    (profile,) = [p for p in dm.sched_config["profiles"]
                  if p["schedulerName"] == dm.config["schedulerName"]]
    (fit_args,) = [c["args"] for c in profile["pluginConfig"] if c["name"] == "NodeResourcesFit"]
    assert set(fit_args["ignoredResources"]) == {
        dm.config["resourceName"], dm.config["resourceMem"],
        dm.config["resourceMemPercentage"], dm.config["resourceCores"]}
    disabled = {p["name"] for p in profile["plugins"]["score"]["disabled"]}
    assert {"NodeResourcesFit", "NodeResourcesBalancedAllocation"} <= disabled
    # The kube-scheduler container reads the config where the ConfigMap is mounted.
    w, ks = [(w, c) for w, c in dm.containers() if c["name"] == "kube-scheduler"][0]
    path = [a.split("=", 1)[1] for a in ks["command"] if a.startswith("--config=")][0]
    mount = [m for m in ks["volumeMounts"] if path.startswith(m["mountPath"] + "/")][0]
    vol = [v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]][0]
    assert vol["configMap"]["name"] == "gpuslice-scheduler-config"
    assert Path(path).name in dm.one("ConfigMap", "gpuslice-scheduler-config")["data"]


def test_chart_values_agree_with_every_programs_flags(dm):
    expect = {
        "--node-policy": dm.config["nodeSchedulerPolicy"],
        "--gpu-policy": dm.config["gpuSchedulerPolicy"],
        "--resource-name": dm.config["resourceName"], "--resource-mem": dm.config["resourceMem"],
        "--resource-mem-percentage": dm.config["resourceMemPercentage"],
        "--resource-cores": dm.config["resourceCores"],
        "--resource-priority": dm.config["resourcePriority"],
        "--default-gpu-num": dm.config["defaultGPUNum"], "--default-mem": dm.config["defaultMem"],
        "--default-cores": dm.config["defaultCores"], "--memory-factor": dm.config["memoryFactor"],
        "--device-split-count": dm.config["deviceSplitCount"],
    }
    seen = 0
    for _, c in dm.containers():
        for flag, value in flags(c).items() if c.get("command", [""])[0] in PROGRAMS else []:
            if flag in expect:
                assert value == expect[flag], (c["name"], flag)
                seen += 1
    assert seen >= 20
    dev = json.loads(dm.config["device-config.json"])["nvidia"]
    assert str(dev["deviceSplitCount"]) == dm.config["deviceSplitCount"]
    assert dev["resourceCountName"] == dm.config["resourceName"]
    assert dev["resourceMemoryName"] == dm.config["resourceMem"]
    assert dev["resourceCoreName"] == dm.config["resourceCores"]


def test_the_webhook_service_configuration_and_certificate_paths_agree(dm):
    w, c = dm.container("gpuslice_webhook")
    f = flags(c)
    svc = dm.one("Service", "gpuslice-webhook")
    cfg = dm.one("MutatingWebhookConfiguration", "gpuslice-webhook")
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


def test_node_paths_agree_between_the_plugin_the_exporter_and_the_host(dm):
    ds = dm.one("DaemonSet", "gpuslice-node")
    spec = ds["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    _, dp = dm.container("gpuslice-device-plugin")
    _, mon = dm.container("gpuslice-monitor")
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
    # The init container copies the image's shim (image/Containerfile puts it at the plugin's
    # default hook path) onto the host directory, by rename, and makes the directories; the
    # plugin writes ld.so.preload itself.
    install = [c for c in spec["initContainers"] if c["name"] == "install-shim"][0]
    script = " ".join(install["command"][2:])
    hook = fd["--host-hook-path"]
    (on_host,) = [mnt["mountPath"] for mnt in install["volumeMounts"]
                  if host_path(install, mnt["mountPath"]) == hook]
    assert f"cp {hook}/libgpuslice.so {on_host}/libgpuslice.so.new" in script
    assert f"mv -f {on_host}/libgpuslice.so.new {on_host}/libgpuslice.so" in script
    for part in ["containers", "region"]:
        assert f"{on_host}/{part}" in script
    assert "COPY --from=builder /out/lib/libgpuslice.so " + hook + "/libgpuslice.so" in \
        (ROOT / "image" / "Containerfile").read_text()
    # The exporter's port.
    port = int(fm["--listen"].rsplit(":", 1)[1])
    assert any(p["containerPort"] == port for p in mon["ports"])
    # The device plugin's config file is the ConfigMap's key, mounted.
    cfg_mount = [m for m in dp["volumeMounts"] if fd["--config"].startswith(m["mountPath"] + "/")]
    vol = [v for v in spec["volumes"] if v["name"] == cfg_mount[0]["name"]][0]
    assert vol["configMap"]["name"] == "gpuslice-config"
    assert Path(fd["--config"]).name in {i["path"] for i in vol["configMap"]["items"]}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_flag_in_the_manifests_is_in_the_programs_help(dm, program):
    exe = PROGRAMS[program]
    if not exe:
        pytest.skip(f"{program} not built here")
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30).stdout
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    assert known, help_text
    if program == "gpuslice-dra-plugin" and not dm.objects("DeviceClass"):
        return  # a variant without the DRA driver
    _, c = dm.container(program)
    for flag in flags(c):
        assert flag in known, f"{program}: {flag} not in its --help"


def test_the_webhook_fails_open_by_default_and_closed_in_its_overlay(dm):
    _, c = dm.container("gpuslice_webhook")
    (hook,) = dm.one("MutatingWebhookConfiguration", "gpuslice-webhook")["webhooks"]
    closed = dm.variant == "overlays/fail-closed"
    assert hook["failurePolicy"] == ("Fail" if closed else "Ignore")
    # The program decides the same for a review it cannot read.
    assert ("--fail-open" in flags(c)) == (not closed)


def test_the_webhook_never_covers_kube_system_its_own_namespace_or_ignored_objects(dm):
    (hook,) = dm.one("MutatingWebhookConfiguration", "gpuslice-webhook")["webhooks"]
    own = hook["clientConfig"]["service"]["namespace"]

    def covers(ns: str, ns_labels=None, pod_labels=None) -> bool:
        labels = dict(ns_labels or {}, **{"kubernetes.io/metadata.name": ns})
        return selects(hook["namespaceSelector"], labels) and \
            selects(hook.get("objectSelector") or {}, pod_labels or {})

    assert covers("default") and covers("team-a", {"env": "prod"})
    for ns in {"kube-system", own}:
        assert not covers(ns), ns
    assert not covers("default", {"hami.io/webhook": "ignore"})
    assert not covers("default", pod_labels={"hami.io/webhook": "ignore"})
    assert covers("default", {"hami.io/webhook": "other"}, {"app": "x"})


def test_only_kube_scheduler_reaches_the_extenders_port(dm):
    w, ext = dm.container("gpuslice_extender")
    port = int(flags(ext)["--port"])
    pod_labels = w["spec"]["template"]["metadata"]["labels"]
    ns = w["metadata"]["namespace"]
    policies = [p for p in dm.objects("NetworkPolicy")
                if p["metadata"]["namespace"] == ns and selects(p["spec"]["podSelector"],
                                                                pod_labels)]
    assert policies, "no NetworkPolicy selects the extender's pods"
    # Kubernetes admits to a selected pod what any policy's ingress rules allow: every rule
    # admits only pods of the scheduler's own Deployment (kube-scheduler beside the extender).
    for p in policies:
        assert "Ingress" in p["spec"]["policyTypes"]
        for rule in p["spec"].get("ingress", []):
            assert rule.get("from"), f"{p['metadata']['name']}: a rule with no `from` admits all"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, peer  # same namespace, no ipBlock
                assert selects(peer["podSelector"], pod_labels)
                assert peer["podSelector"].get("matchLabels") or \
                    peer["podSelector"].get("matchExpressions"), "an empty podSelector is all pods"
            assert {pt["port"] for pt in rule.get("ports", [])} == {port}
    # Nothing else in the rendering runs with those labels (so nothing else is admitted).
    others = [x for x in dm.objects("Deployment") + dm.objects("DaemonSet") if x is not w]
    assert not any(selects(policies[0]["spec"]["ingress"][0]["from"][0]["podSelector"],
                           x["spec"]["template"]["metadata"]["labels"]) for x in others)


def image_tag() -> str:
    return subprocess.run([str(ROOT / "scripts" / "image.sh"), "--print-tag"], check=True,
                          capture_output=True, text=True, timeout=30).stdout.strip()


def test_every_gpuslice_container_runs_the_tag_image_sh_builds(dm):
    tag = image_tag()
    version = re.search(r"project\(gpuslice VERSION ([0-9.]+)",
                        (ROOT / "CMakeLists.txt").read_text()).group(1)
    assert tag == f"gpuslice/gpuslice:{version}"
    images = {c["name"]: c["image"] for _, c in dm.containers()}
    assert {n: i for n, i in images.items() if n != "kube-scheduler"} == \
        {n: tag for n in images if n != "kube-scheduler"}


def supported_scheduler_versions() -> list[str]:
    """The kube-scheduler minor versions examples/deploy/README.md's table lists."""
    text = (DEPLOY / "README.md").read_text()
    table = text[text.index("| kube-scheduler |"):]
    return re.findall(r"^\| (1\.\d+) \|", table, re.M)


def test_kube_scheduler_follows_the_clusters_version_through_the_images_parameter(tmp_path):
    versions = supported_scheduler_versions()
    assert len(versions) >= 3 and "1.30" in versions
    # The default is one of the table's versions...
    w, ks = [(w, c) for w, c in rendered("base").containers() if c["name"] == "kube-scheduler"][0]
    name, tag = ks["image"].rsplit(":", 1)
    assert name == "registry.k8s.io/kube-scheduler"
    assert re.fullmatch(r"v(1\.\d+)\.\d+", tag).group(1) in versions
    # ...and an operator's overlay sets the cluster's own, as README.md says.
    for v in [versions[0], versions[-1]]:
        (tmp_path / v).mkdir()
        (tmp_path / v / "kustomization.yaml").write_text(json.dumps({
            "resources": [os.path.relpath(DEPLOY / "base", tmp_path / v)],
            "images": [{"name": "registry.k8s.io/kube-scheduler", "newTag": f"v{v}.0"}]}))
        docs = Manifests(v, kustomize(tmp_path / v))
        (ks,) = [c for _, c in docs.containers() if c["name"] == "kube-scheduler"]
        assert ks["image"] == f"registry.k8s.io/kube-scheduler:v{v}.0"


def test_the_hami_overlay_takes_hamis_names():
    dm = rendered("overlays/hami")
    for d in dm.docs:
        if "namespace" in d["metadata"]:
            assert d["metadata"]["namespace"] == HAMI["namespace"], d["metadata"]
    assert not dm.objects("Namespace")
    for key in ["schedulerName", "resourceName", "resourceMem", "resourceMemPercentage",
                "resourceCores", "resourcePriority"]:
        assert dm.config[key] == HAMI[key], key
    assert [p["schedulerName"] for p in dm.sched_config["profiles"]] == [HAMI["schedulerName"]]
    _, wh = dm.container("gpuslice_webhook")
    assert flags(wh)["--scheduler-name"] == HAMI["schedulerName"]
    # Everything else is the base's.
    base = rendered("base")
    assert len(dm.docs) == len(base.docs) - 1
    assert dm.sched_config["extenders"] == base.sched_config["extenders"]


def test_the_dra_overlay_lets_the_webhook_make_claims_and_ships_the_driver():
    dm = rendered("overlays/dra")
    _, wh = dm.container("gpuslice_webhook")
    f = flags(wh)
    assert f["--dra"] == "annotated" and f["--in-cluster"] == "true"
    assert f["--fail-open"] == "true"  # the base's choice stays
    (cfg,) = dm.objects("MutatingWebhookConfiguration")
    # The webhook creates templates (skipped on a dry run): None would be a false promise.
    assert cfg["webhooks"][0]["sideEffects"] == "NoneOnDryRun"
    # What the webhook creates, in any namespace, its service account may create.
    roles = {r["metadata"]["name"]: r for r in dm.objects("ClusterRole")}
    (bound,) = [b for b in dm.objects("ClusterRoleBinding")
                if {"kind": "ServiceAccount", "name": wh_account(dm),
                    "namespace": "gpuslice-system"} in b["subjects"]]
    rules = roles[bound["roleRef"]["name"]]["rules"]
    assert any("resource.k8s.io" in r["apiGroups"] and "resourceclaimtemplates" in r["resources"]
               and "create" in r["verbs"] for r in rules)
    # The claims name the DeviceClass the driver's overlay ships, which selects its driver.
    (dc,) = dm.objects("DeviceClass")
    assert dc["metadata"]["name"] == "gpuslice"
    (ds,) = [w for w, c in dm.containers() if c["name"] == "dra-plugin"]
    assert ds["kind"] == "DaemonSet"
    # The base's objects are all there, unchanged in number.
    assert len(dm.docs) > len(rendered("base").docs)


def wh_account(dm) -> str:
    (w,) = [w for w, c in dm.containers() if c["name"] == "webhook"]
    return w["spec"]["template"]["spec"]["serviceAccountName"]


def test_programs_run_as_non_root_except_the_node_plugins(dm):
    for w, c in dm.containers():
        pod = w["spec"]["template"]["spec"].get("securityContext", {})
        sc = dict(pod, **c.get("securityContext", {}))
        if c["name"] in ("device-plugin", "dra-plugin", "install-shim"):
            assert sc.get("runAsUser") == 0, c["name"]  # kubelet's sockets, the host directory
        else:
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, c["name"]
            assert sc.get("allowPrivilegeEscalation") is False, c["name"]
