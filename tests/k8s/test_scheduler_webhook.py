"""The admission webhook over HTTPS, as the API server calls it: a certificate made the way
examples/deploy/README.md documents (openssl, a SAN naming the Service), the client verifying
it against the CA bundle that goes into the MutatingWebhookConfiguration's caBundle.

Needs GPUSLICE_WEBHOOK (the built gpuslice_webhook) and the openssl command; skipped otherwise."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess

import pytest

WEBHOOK = os.environ.get("GPUSLICE_WEBHOOK", "")
pytestmark = pytest.mark.skipif(not WEBHOOK or not shutil.which("openssl"),
                                reason="GPUSLICE_WEBHOOK or openssl missing")
SERVICE_DNS = "gpuslice-webhook.kube-system.svc"
TIMEOUT_S = 20


def make_certificate(d) -> tuple[str, str]:
    """A self-signed serving certificate for the Service name and 127.0.0.1."""
    crt, key = str(d / "tls.crt"), str(d / "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", key, "-out", crt, "-subj", f"/CN={SERVICE_DNS}",
                    "-addext", f"subjectAltName=DNS:{SERVICE_DNS},IP:127.0.0.1"],
                   check=True, capture_output=True)
    return crt, key


class Webhook:
    def __init__(self, crt: str, key: str, *args: str):
        self.proc = subprocess.Popen([WEBHOOK, "--cert", crt, "--key", key, "--listen",
                                      "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert "on https://127.0.0.1:" in line, line + self.proc.stderr.read()
        self.port = int(line.split("on https://127.0.0.1:")[1].split()[0])
        self.ctx = ssl.create_default_context(cafile=crt)

    def post(self, body: str, path: str = "/mutate") -> tuple[int, dict]:
        c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=TIMEOUT_S,
                                        context=self.ctx)
        try:
            c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, json.loads(r.read())
        finally:
            c.close()

    def close(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=TIMEOUT_S)
        return err


def review(pod: dict, uid: str = "u-1") -> str:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": uid, "kind": {"group": "", "version": "v1",
                                                        "kind": "Pod"},
                                   "namespace": "default", "operation": "CREATE",
                                   "object": pod}})


def test_admission_over_https(tmp_path):
    crt, key = make_certificate(tmp_path)
    w = Webhook(crt, key, "--scheduler-name", "gpuslice-scheduler")
    try:
        pod = {"metadata": {"name": "p"},
               "spec": {"containers": [{"name": "main", "resources": {"limits": {
                   "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30"}}}]}}
        status, out = w.post(review(pod))
        assert status == 200
        r = out["response"]
        assert (r["uid"], r["allowed"], r["patchType"]) == ("u-1", True, "JSONPatch")
        ops = json.loads(base64.b64decode(r["patch"]))
        assert {"op": "add", "path": "/spec/schedulerName", "value": "gpuslice-scheduler"} in ops
        assert {"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpu",
                "value": "1"} in ops

        bad = dict(pod, metadata={"name": "p", "annotations": {"nvidia.com/numa-bind": "maybe"}})
        status, out = w.post(review(bad, "u-2"))
        assert status == 200 and out["response"]["allowed"] is False
        assert "numa-bind" in out["response"]["status"]["message"]

        status, out = w.post("{not json")
        assert status == 400 and "AdmissionReview" in out["error"]
    finally:
        assert "refused" in w.close()


def test_hamis_path_and_v1beta1_review(tmp_path):
    """HAMi's chart calls /webhook with admission.k8s.io/v1beta1 reviews; the answer comes back
    in v1beta1."""
    crt, key = make_certificate(tmp_path)
    w = Webhook(crt, key)
    try:
        pod = {"metadata": {"name": "p"},
               "spec": {"containers": [{"name": "main", "resources": {"limits": {
                   "nvidia.com/gpu": "1"}}}]}}
        body = json.loads(review(pod))
        body["apiVersion"] = "admission.k8s.io/v1beta1"
        status, out = w.post(json.dumps(body), "/webhook")
        assert status == 200
        assert out["apiVersion"] == "admission.k8s.io/v1beta1"
        assert out["response"]["allowed"] is True and out["response"]["uid"] == "u-1"
    finally:
        w.close()


def test_a_missing_certificate_is_one_clear_line(tmp_path):
    p = subprocess.run([WEBHOOK, "--cert", str(tmp_path / "none.crt"), "--key",
                        str(tmp_path / "none.key"), "--port", "0"],
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode != 0
    assert p.stderr.startswith("gpuslice_webhook: ") and "certificate" in p.stderr
