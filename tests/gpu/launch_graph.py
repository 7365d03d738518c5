"""torch.cuda.graph under libgpuslice.so (tests/gpu/run.sh): the capture must survive the limiter's
watcher thread, and the graph's replays must be capped like launches.

A second thread first launches a long kernel (torch.cuda._sleep) on a stream of its own; it is
that thread's first launch, which the shim times with two events, so the watcher polls its end
event every 10 ms for as long as it runs. While it runs, the main thread captures a graph in
torch.cuda.graph's default global capture mode and holds the capture open for CAPTURE_HOLD_S.
The capture is begun with CUDAGraph.capture_begin in global mode, as torch.cuda.graph does
(whose context manager would first synchronise, waiting for the side kernel). Under global mode
a "potentially unsafe" driver call from another thread (cuEventQuery) would
invalidate the capture; the shim's watcher runs in relaxed mode, so the capture must survive.
Then the graph (one compute kernel of about REPLAY_KERNEL_MS) is replayed for WINDOW_S and its
replay rate reported; run.sh compares it with the same program without the shim.

One "key=value" per line: captured=1|0, error=..., replays_per_s=...
"""
import sys
import threading
import time

import torch

CAPTURE_HOLD_S = 0.3        # the capture stays open this long (30 watcher ticks)
SIDE_KERNEL_S = 1.0         # the side thread's kernel, timed by the shim, runs about this long
REPLAY_KERNEL_MS = 2.0      # the captured kernel's length
WARMUP_S = 1.0              # replays before the window (the limiter learns the graph's cost)
WINDOW_S = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
SYNC_EVERY = 8              # replays between synchronisations (bounds the queue)


def cycles_per_ms():
    """GPU clock cycles per ms of torch.cuda._sleep, measured after a warm-up."""
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    n = 10_000_000
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(n)
    b.record()
    b.synchronize()
    return n / max(a.elapsed_time(b), 1e-3)


def main():
    torch.cuda.init()
    per_ms = cycles_per_ms()
    print(f"cycles_per_ms={per_ms:.0f}")

    side_stream = torch.cuda.Stream()
    started = threading.Event()

    def side():
        with torch.cuda.stream(side_stream):
            torch.cuda._sleep(int(SIDE_KERNEL_S * 1000 * per_ms))
        started.set()

    t = threading.Thread(target=side)
    g = torch.cuda.CUDAGraph()
    static = torch.zeros(1, device="cuda")
    capture_stream = torch.cuda.Stream()
    capture_stream.wait_stream(torch.cuda.current_stream())
    torch.cuda.synchronize()
    # The side kernel starts now and runs through the whole capture. The capture is begun
    # directly (torch.cuda.graph's context manager synchronises the device first, which would
    # wait for the side kernel), in the same default global mode.
    t.start()
    started.wait()
    try:
        with torch.cuda.stream(capture_stream):
            g.capture_begin(capture_error_mode="global")
            try:
                torch.cuda._sleep(int(REPLAY_KERNEL_MS * per_ms))
                static.add_(1)
                time.sleep(CAPTURE_HOLD_S)
            finally:
                g.capture_end()
        print("captured=1")
    except Exception as e:  # noqa: BLE001 - the error is the finding
        print("captured=0")
        print("error=" + str(e).replace("\n", " ")[:300])
        t.join()
        return 1
    t.join()
    torch.cuda.synchronize()

    start = time.perf_counter()
    n = 0
    t0 = None
    while True:
        g.replay()
        n += 1
        if n % SYNC_EVERY:
            continue
        torch.cuda.synchronize()
        now = time.perf_counter()
        if t0 is None and now - start >= WARMUP_S:
            t0, n0 = now, n
        if t0 is not None and now - t0 >= WINDOW_S:
            break
    print(f"replays={n - n0}")
    print(f"replays_per_s={(n - n0) / (time.perf_counter() - t0):.3f}")
    print(f"static={static.item():.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
