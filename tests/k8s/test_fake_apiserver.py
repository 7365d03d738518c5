"""The fake API server keeps the API's documented behaviour: versions, selectors, watches,
patches, conflicts, bindings and faults (these are what the programs under test rely on)."""

import http.client
import json
import threading
import time

import pytest

from fake_apiserver import FakeAPIServer, json_patch, merge_patch, ApiError


def call(server, method, path, body=None, ctype="application/json", timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    try:
        conn.request(method, path, body=data, headers={"Content-Type": ctype} if data else {})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def watch_lines(server, path, count, timeout=5):
    """The first ``count`` events of a watch on ``path``."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request("GET", path)
    r = conn.getresponse()
    assert r.status == 200
    events = []
    while len(events) < count:
        line = r.readline()
        if not line:
            break
        events.append(json.loads(line))
    conn.close()
    return events


def test_versions_increase_and_list_carries_one(fake_apiserver):
    a = fake_apiserver.add_node("n1")
    b = fake_apiserver.add_pod("p1", node_name="n1")
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    code, lst = call(fake_apiserver, "GET", "/api/v1/pods")
    assert code == 200 and lst["kind"] == "PodList"
    assert lst["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"]
    assert [p["metadata"]["name"] for p in lst["items"]] == ["p1"]
    assert b["metadata"]["uid"]


def test_selectors(fake_apiserver):
    fake_apiserver.add_pod("a", node_name="n1", labels={"app": "x"})
    fake_apiserver.add_pod("b", node_name="n2", labels={"app": "y"})
    fake_apiserver.add_pod("c", namespace="other", node_name="n1")
    names = lambda q: [p["metadata"]["name"] for p in call(fake_apiserver, "GET", q)[1]["items"]]
    assert names("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1") == ["a", "c"]
    assert names("/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName%3Dn1") == ["a"]
    assert names("/api/v1/pods?labelSelector=app%3Dy") == ["b"]
    assert names("/api/v1/pods?labelSelector=app%20in%20(x,y)") == ["a", "b"]
    assert names("/api/v1/pods?labelSelector=!app") == ["c"]
    code, st = call(fake_apiserver, "GET", "/api/v1/pods?fieldSelector=spec.schedulerName%3Dx")
    assert code == 400 and st["kind"] == "Status" and "not supported" in st["message"]


def test_merge_patch_conflict_and_noop(fake_apiserver):
    fake_apiserver.add_node("n1", annotations={"keep": "1", "drop": "2"})
    code, node = call(fake_apiserver, "PATCH", "/api/v1/nodes/n1",
                      {"metadata": {"annotations": {"drop": None, "new": "3"}}},
                      "application/merge-patch+json")
    assert code == 200 and node["metadata"]["annotations"] == {"keep": "1", "new": "3"}
    rv = node["metadata"]["resourceVersion"]
    # the same patch again changes nothing: no new version
    code, again = call(fake_apiserver, "PATCH", "/api/v1/nodes/n1",
                       {"metadata": {"annotations": {"new": "3"}}}, "application/merge-patch+json")
    assert again["metadata"]["resourceVersion"] == rv
    # a stale precondition is a 409 and changes nothing
    code, st = call(fake_apiserver, "PATCH", "/api/v1/nodes/n1",
                    {"metadata": {"resourceVersion": "1", "annotations": {"x": "y"}}},
                    "application/merge-patch+json")
    assert code == 409 and st["reason"] == "Conflict"
    assert "x" not in fake_apiserver.get("nodes", "n1")["metadata"]["annotations"]
    code, _ = call(fake_apiserver, "PATCH", "/api/v1/nodes/n1", {"a": 1},
                   "application/strategic-merge-patch+json")
    assert code == 415
    assert [m["status"] for m in fake_apiserver.mutations] == [200, 200, 409, 415]


def test_json_patch_and_test_op(fake_apiserver):
    fake_apiserver.add_pod("p", annotations={"a/b": "1"})
    code, pod = call(fake_apiserver, "PATCH", "/api/v1/namespaces/default/pods/p",
                     [{"op": "test", "path": "/metadata/annotations/a~1b", "value": "1"},
                      {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"}],
                     "application/json-patch+json")
    assert code == 200 and pod["metadata"]["annotations"]["a/b"] == "2"
    code, st = call(fake_apiserver, "PATCH", "/api/v1/namespaces/default/pods/p",
                    [{"op": "test", "path": "/metadata/annotations/a~1b", "value": "1"},
                     {"op": "remove", "path": "/metadata/annotations/a~1b"}],
                    "application/json-patch+json")
    assert code == 422
    assert fake_apiserver.get("pods", "p")["metadata"]["annotations"]["a/b"] == "2"


def test_patch_helpers_follow_the_rfcs():
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}) == {"a": {"c": 2}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert json_patch({"l": [1, 3]}, [{"op": "add", "path": "/l/1", "value": 2}]) == \
        {"l": [1, 2, 3]}
    assert json_patch({"a": 1}, [{"op": "move", "from": "/a", "path": "/b"}]) == {"b": 1}
    with pytest.raises(ApiError):
        json_patch({"a": 1}, [{"op": "remove", "path": "/nope"}])


def test_binding(fake_apiserver):
    fake_apiserver.add_pod("p")
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}
    code, st = call(fake_apiserver, "POST", "/api/v1/namespaces/default/pods/p/binding", binding)
    assert code == 201 and st["status"] == "Success"
    assert fake_apiserver.get("pods", "p")["spec"]["nodeName"] == "n1"
    code, st = call(fake_apiserver, "POST", "/api/v1/namespaces/default/pods/p/binding", binding)
    assert code == 409 and "already assigned" in st["message"]
    code, _ = call(fake_apiserver, "POST", "/api/v1/namespaces/default/pods/q/binding", binding)
    assert code == 404


def test_watch_initial_then_changes_then_resume(fake_apiserver):
    fake_apiserver.add_pod("a", node_name="n1")
    fake_apiserver.add_pod("b", node_name="n2")
    got = []

    def watcher():
        got.extend(watch_lines(fake_apiserver,
                               "/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dn1", 3))
    t = threading.Thread(target=watcher)
    t.start()
    deadline = time.monotonic() + 5
    while fake_apiserver.open_watches == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    fake_apiserver.add_pod("c", node_name="n2")  # filtered out
    fake_apiserver.add_pod("d", node_name="n1")
    fake_apiserver.delete("pods", "a")
    t.join(5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == \
        [("ADDED", "a"), ("ADDED", "d"), ("DELETED", "a")]
    # resuming from d's version gives only what came after it
    rv = got[1]["object"]["metadata"]["resourceVersion"]
    ev = watch_lines(fake_apiserver, f"/api/v1/pods?watch=1&resourceVersion={rv}"
                     "&timeoutSeconds=1", 5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in ev] == [("DELETED", "a")]


def test_watch_too_old_is_gone(fake_apiserver):
    p = fake_apiserver.add_pod("a")
    fake_apiserver.update("pods", "a", lambda o: o["metadata"]["labels"].update(x="1"))
    fake_apiserver.compact()
    ev = watch_lines(fake_apiserver, "/api/v1/pods?watch=1&resourceVersion="
                     + p["metadata"]["resourceVersion"], 1)
    assert ev[0]["type"] == "ERROR" and ev[0]["object"]["code"] == 410
    fake_apiserver.watch_gone_status = 410
    code, st = call(fake_apiserver, "GET", "/api/v1/pods?watch=1&resourceVersion="
                    + p["metadata"]["resourceVersion"])
    assert code == 410 and st["reason"] == "Expired"


def test_faults(fake_apiserver):
    fake_apiserver.add_node("n1")
    fake_apiserver.fault(method="GET", path="/nodes/n1", status=503, times=1)
    assert call(fake_apiserver, "GET", "/api/v1/nodes/n1")[0] == 503
    assert call(fake_apiserver, "GET", "/api/v1/nodes/n1")[0] == 200
    fake_apiserver.fault(path="/nodes/n1", hang=True, times=None)
    with pytest.raises(OSError):
        call(fake_apiserver, "GET", "/api/v1/nodes/n1", timeout=0.3)
    fake_apiserver.clear_faults()
    assert call(fake_apiserver, "GET", "/api/v1/nodes/n1")[0] == 200


def test_control_endpoints():
    with FakeAPIServer() as s:
        assert call(s, "POST", "/fake/fault", {"path": "pods", "status": 500})[0] == 200
        assert call(s, "GET", "/api/v1/pods")[0] == 500
        assert call(s, "POST", "/fake/fault", {"bogus": 1})[0] == 400
        call(s, "POST", "/api/v1/namespaces/default/pods", {"metadata": {"name": "p"}})
        code, muts = call(s, "GET", "/fake/mutations")
        assert code == 200 and [m["path"] for m in muts] == ["/api/v1/namespaces/default/pods"]


def test_bookmarks_carry_the_current_version():
    with FakeAPIServer(bookmark_interval=0.05) as s:
        p = s.add_pod("a")
        s.add_node("n")  # moves the global version on, but not the pods
        ev = watch_lines(s, "/api/v1/pods?watch=1&allowWatchBookmarks=true&resourceVersion="
                         + p["metadata"]["resourceVersion"], 1)
        assert ev[0]["type"] == "BOOKMARK"
        assert int(ev[0]["object"]["metadata"]["resourceVersion"]) > \
            int(p["metadata"]["resourceVersion"])
        # without allowWatchBookmarks, none
        ev = watch_lines(s, "/api/v1/pods?watch=1&timeoutSeconds=1&resourceVersion="
                         + p["metadata"]["resourceVersion"], 1)
        assert ev == []
