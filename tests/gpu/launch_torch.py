"""End-to-end cost of libgpuslice.so on a PyTorch training loop (tests/gpu/run.sh): a small MLP
trained for a fixed number of steps, timed after a warm-up. One "key=value" per line."""
import sys
import time

import torch

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
WARMUP = 30
WIDTH = 2048
BATCH = 512

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(),
    torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(),
    torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(),
    torch.nn.Linear(WIDTH, 10),
).cuda()
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
x = torch.randn(BATCH, WIDTH, device="cuda")
y = torch.randint(0, 10, (BATCH,), device="cuda")


def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


for _ in range(WARMUP):
    step()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(STEPS):
    step()
torch.cuda.synchronize()
print(f"seconds={time.perf_counter() - t:.6f}")
print(f"steps={STEPS}")
