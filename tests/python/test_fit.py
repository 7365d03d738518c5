"""The fit engine from Python: model, cycle, user scorers, codecs, and properties."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuslice as g

GIB = 2**30


def node(name, n, mem="16Gi", **kw):
    devs = [g.Device(f"{name}-gpu{i}", mem, index=i, type="NVIDIA-Tesla V100") for i in range(n)]
    return g.Node(name, devs, cpu=64000, memory="256Gi", **kw)


def test_fit_places_and_reserve_applies():
    c = g.Cluster([node("a", 2), node("b", 2)])
    d = c.fit(g.ContainerRequest(count=1, memory="4Gi", cores=30, cpu=1000))
    assert d.containers[0][0] == d.containers[0][0] and d.containers[0][0] != "x"
    assert d.placed and d.node == 0  # tie between a and b goes to the smaller name
    assert len(d.containers) == 1 and d.containers[0][0].milli == 300
    assert d.containers[0][0].memory == 4 * GIB
    c.reserve(d)
    dev = c.nodes[0].devices[d.containers[0][0].device]
    assert (dev.memory_used, dev.cores_used, dev.slots_used) == (4 * GIB, 300, 1)
    assert c.nodes[0].cpu_used == 1000
    assert c.annotation(d) == f"{dev.uuid},NVIDIA,4096,30:;"
    c.release(d)
    assert c.nodes[0].devices[d.containers[0][0].device].memory_used == 0
    with pytest.raises(ValueError, match="does not fit node \"a\""):
        c.release(d)


def test_reasons_are_counted_per_node():
    nodes = [node(f"small{i}", 2, mem="4Gi") for i in range(3)]
    nodes += [g.Node(f"t4-{i}", [g.Device(f"t4-{i}-0", "16Gi", type="NVIDIA-Tesla T4")],
                     cpu=1000, memory="1Gi") for i in range(2)]
    d = g.fit(nodes, g.ContainerRequest(count=1, memory="8Gi", use_types=["v100"]))
    assert not d.placed and d.node is None
    assert d.reasons == {"insufficient_memory": 3, "type_mismatch": 2, "insufficient_devices": 5}
    assert d.message.startswith("0/5 nodes are available: 5 nodes: too few suitable GPUs")


def test_one_quantity_two_spellings():
    a = g.ContainerRequest(count=1, memory=1, cores=25)
    b = g.ContainerRequest(count=1, memory=1, milli=250)
    assert a.milli == b.milli == 250 and b.cores == 25
    with pytest.raises(ValueError, match="not both"):
        g.ContainerRequest(count=1, cores=25, milli=250)
    with pytest.raises(ValueError, match="memory_percent 120"):
        g.ContainerRequest(count=1, memory_percent=120)
    with pytest.raises(ValueError, match="invalid quantity"):
        g.ContainerRequest(count=1, memory="3GB")


def test_bad_input_is_one_clear_line():
    with pytest.raises(ValueError, match="expected a square"):
        node("x", 2, links=[[0, 1]])
    with pytest.raises(ValueError, match='policy "best"'):
        g.fit([node("a", 1)], g.ContainerRequest(count=1, memory=1), policy="best")
    with pytest.raises(ValueError, match="used exceed the total"):
        g.Node("bad", [g.Device("d", 10, memory_used=11)])


def test_a_python_callable_scores_nodes():
    seen = []

    def prefer_last(n, alloc):
        seen.append((n.name, [[x.device for x in c] for c in alloc]))
        return float(n.name[-1])

    d = g.fit([node("n1", 2), node("n3", 2), node("n2", 2)],
              g.ContainerRequest(count=2, memory="1Gi"), scorer=prefer_last)
    assert d.node == 1
    assert sorted(s[0] for s in seen) == ["n1", "n2", "n3"]
    assert all(a == [[0, 1]] for _, a in seen)


def test_topology_from_python():
    links = [[0 if a == b else (100 if a // 2 == b // 2 else 10) for b in range(4)]
             for a in range(4)]
    n = node("n", 4, mem="80Gi", links=links)
    n.devices[0].slots_used = 1
    n.devices[0].memory_used = 1
    d = g.fit([n], g.ContainerRequest(count=1, memory="8Gi"), gpu_policy="topology")
    assert d.containers[0][0].device == 0  # already busy: taking it breaks no idle pair
    d2 = g.fit([node("m", 4, links=links)], g.ContainerRequest(count=2, memory="1Gi"),
               scorer="topology")
    assert [x.device for x in d2.containers[0]] == [0, 1]


def test_codecs_from_python():
    pod = [[("GPU-a", "NVIDIA", 1024, 30)], [], [("GPU-b", "NVIDIA", 1, 0)]]
    text = g.encode_pod_devices(pod)
    assert text == "GPU-a,NVIDIA,1024,30:;;GPU-b,NVIDIA,1,0:;"
    assert g.decode_pod_devices(text) == pod
    with pytest.raises(ValueError, match="expected 4 fields"):
        g.decode_pod_devices("GPU-a,NVIDIA,1:;")
    devs = g.decode_node_devices('[{"id":"GPU-0","count":10,"devmem":16384,"devcore":100,'
                                 '"type":"NVIDIA-T4","health":true}]')
    assert devs[0].memory == 16384 * 2**20 and devs[0].cores == 1000 and devs[0].healthy
    assert g.decode_node_devices(g.encode_node_devices(devs))[0].uuid == "GPU-0"
    m = g.decode_pair_scores('[{"uuid":"GPU-0","score":{}}]', devs)
    assert m == [[0]]


# ---- properties ------------------------------------------------------------------------------

PCT = 100


def fits(dev, mem, milli):
    """HAMi's device rules for a request with explicit memory and cores (brute-force model)."""
    used, mem_used, cores_used = dev
    if used >= SLOTS or MEM - mem_used < mem or 1000 - cores_used < milli:
        return False
    if milli == 1000 and used > 0:
        return False
    if milli == 0 and cores_used == 1000:
        return False
    return True


SLOTS = 3
MEM = 8


def brute_force(devices, containers):
    """Whether some assignment of distinct devices per container places every container."""

    def rec(k, state):
        if k == len(containers):
            return True
        count, mem, milli = containers[k]
        for combo in itertools.combinations(range(len(state)), count):
            if all(fits(state[i], mem, milli) for i in combo):
                nxt = list(state)
                for i in combo:
                    u, m, c = nxt[i]
                    nxt[i] = (u + 1, m + mem, c + milli)
                if rec(k + 1, nxt):
                    return True
        return False

    return rec(0, list(devices))


device_state = st.tuples(st.integers(0, SLOTS), st.integers(0, MEM),
                         st.sampled_from([0, 200, 500, 1000]))
container = st.tuples(st.integers(1, 2), st.integers(1, MEM),
                      st.sampled_from([100, 300, 500, 1000]))


def build(devices):
    devs = [g.Device(f"d{i}", MEM, index=i, slots=SLOTS, slots_used=u, memory_used=m,
                     cores_used=c) for i, (u, m, c) in enumerate(devices)]
    return g.Node("n", devs, cpu=1000, memory=1000)


def pod_of(containers):
    return [g.ContainerRequest(count=n, memory=m, milli=c) for n, m, c in containers]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(device_state, min_size=1, max_size=4), st.lists(container, min_size=1,
                                                                    max_size=3),
       st.sampled_from(["binpack", "spread"]))
def test_fit_finds_a_placement_whenever_brute_force_does(devices, containers, gpu_policy):
    d = g.fit([build(devices)], pod_of(containers), gpu_policy=gpu_policy, backtrack=True)
    assert d.placed == brute_force(devices, containers)
    if d.placed:
        state = list(devices)
        for (count, mem, milli), grants in zip(containers, d.containers):
            assert len({x.device for x in grants}) == count
            for x in grants:
                assert fits(state[x.device], mem, milli)
                u, m, c = state[x.device]
                state[x.device] = (u + 1, m + mem, c + milli)


request = st.builds(
    lambda n, mem, pct, cores, excl: g.ContainerRequest(
        count=n, memory=mem * GIB if pct == 0 else 0, memory_percent=pct, cores=cores,
        exclusive=excl, cpu=500),
    st.integers(1, 3), st.integers(1, 20), st.sampled_from([0, 0, 25, 50]),
    st.sampled_from([0, 10, 30, 60, 100]), st.sampled_from([False, False, False, True]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(request, min_size=1, max_size=2), min_size=1, max_size=40),
       st.sampled_from(["binpack", "spread"]), st.sampled_from(["binpack", "spread", "topology"]))
def test_an_allocation_never_exceeds_a_device(pods, policy, gpu_policy):
    links = [[0 if a == b else (100 if a // 2 == b // 2 else 10) for b in range(4)]
             for a in range(4)]
    nodes = [node("a", 4, mem="16Gi", links=links), node("b", 2, mem="32Gi"),
             node("c", 1, mem="8Gi")]
    c = g.Cluster(nodes)
    for pod in pods:
        d = c.fit(pod, policy=policy, gpu_policy=gpu_policy, backtrack=True)
        if d.placed:
            c.reserve(d)
    for n in c.nodes:
        for dev in n.devices:
            assert dev.memory_used <= dev.memory
            assert dev.cores_used <= dev.cores
            assert dev.slots_used <= dev.slots


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(request, min_size=1, max_size=2), min_size=1, max_size=25),
       st.sampled_from(["binpack", "spread"]), st.sampled_from(["binpack", "spread", "topology"]))
def test_the_result_is_identical_across_runs(pods, policy, gpu_policy):
    def run():
        c = g.Cluster([node(f"n{i}", 1 + i % 4) for i in range(6)])
        out = []
        for pod in pods:
            d = c.fit(pod, policy=policy, gpu_policy=gpu_policy)
            out.append((d.placed, d.node, d.score, d.containers, d.reasons))
            if d.placed:
                c.reserve(d)
        return out

    assert run() == run()
