"""The admission webhook's DRA mode as a program: the ResourceClaimTemplates it creates in the
(fake) API server before answering, an existing one kept, nothing on a dry run, and a pod
refused when its template cannot be created.

Needs GPUSLICE_WEBHOOK (the built gpuslice_webhook) and the openssl command; skipped otherwise."""

from __future__ import annotations

import base64
import json

from fake_apiserver import FakeAPIServer
from test_scheduler_webhook import Webhook, make_certificate, pytestmark, review  # noqa: F401

TEMPLATE = "gpuslice-1x-3000mi-30c"


def share_pod(name: str) -> dict:
    return {"metadata": {"name": name, "annotations": {"gpuslice.dev/dra": "true"}},
            "spec": {"containers": [{"name": "main", "resources": {"limits": {
                "nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000",
                "nvidia.com/gpucores": "30"}}}]}}


def test_dra_mode_creates_the_template_then_answers(tmp_path):
    crt, key = make_certificate(tmp_path)
    with FakeAPIServer() as api:
        w = Webhook(crt, key, "--dra", "annotated", "--apiserver", api.url)
        try:
            status, out = w.post(review(share_pod("a")))
            assert status == 200
            r = out["response"]
            assert r["allowed"] is True
            ops = json.loads(base64.b64decode(r["patch"]))
            assert {"op": "add", "path": "/spec/resourceClaims",
                    "value": [{"name": "gpuslice-0",
                               "resourceClaimTemplateName": TEMPLATE}]} in ops
            t = api.get("resourceclaimtemplates", TEMPLATE, "default")
            assert t is not None
            req = t["spec"]["spec"]["devices"]["requests"][0]["exactly"]
            assert req["capacity"]["requests"] == {"memory": "3000Mi", "cores": "30"}

            # The same request again: the template exists (409), the pod is still admitted.
            status, out = w.post(review(share_pod("b"), "u-2"))
            assert status == 200 and out["response"]["allowed"] is True
            assert len(api.objects("resourceclaimtemplates")) == 1

            # A dry run creates nothing.
            body = json.loads(review(dict(share_pod("c"), metadata={
                "name": "c", "annotations": {"gpuslice.dev/dra": "true"}}), "u-3"))
            body["request"]["dryRun"] = True
            body["request"]["object"]["spec"]["containers"][0]["resources"]["limits"][
                "nvidia.com/gpucores"] = "40"
            status, out = w.post(json.dumps(body))
            assert status == 200 and out["response"]["allowed"] is True
            assert len(api.objects("resourceclaimtemplates")) == 1

            # The API server refuses the template: the pod is refused, with the reason, and no
            # patch (it would name a template that does not exist).
            api.fault(method="POST", path="resourceclaimtemplates", status=403, times=1)
            pod = share_pod("d")
            pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpucores"] = "50"
            status, out = w.post(review(pod, "u-4"))
            r = out["response"]
            assert status == 200 and r["allowed"] is False and "patch" not in r
            assert "gpuslice-1x-3000mi-50c" in r["status"]["message"]
            assert api.get("resourceclaimtemplates", "gpuslice-1x-3000mi-50c", "default") is None
        finally:
            err = w.close()
        assert "refused" in err
