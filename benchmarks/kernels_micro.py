"""Per-call timings of the sparse linear kernels against the dense-masked layer.

    python benchmarks/kernels_micro.py                       # 1568x1568 and 784->1568 at 1 %, batch 32 and 256
    python benchmarks/kernels_micro.py --sweep               # find the crossover density per batch size
    python benchmarks/kernels_micro.py --mlp                 # one training step of 784-1568-1568-1568-10

Each measurement is forward + backward of one layer (input, link values and bias all need
gradients, as in a hidden layer). The implementations are timed round-robin inside one process
and the median over rounds is printed, so a busy machine slows all of them alike.

* ``dense``  — ``x @ (W * M).T + b`` with a dense weight gradient (what masking costs);
* ``torch``  — :func:`brainsparse.kernels.sparse_linear` on PyTorch CSR kernels;
* ``gather`` — the same maths as gathers and ``index_add_`` (a pure-tensor alternative);
* ``cpp``    — :func:`brainsparse.kernels.sparse_linear` on the compiled kernel (when it builds).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from brainsparse.kernels import LinkStructure, SparseLinear, available, sparse_linear

Step = Callable[[], None]


def _clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def _timings(fns: dict[str, Step], rounds: int, inner: int, clock: str = "wall") -> dict[str, tuple[float, float]]:
    """(median, min) time per call in ms over ``rounds``.

    ``clock="cpu"`` counts process CPU time instead of wall time: on a machine shared with other
    jobs and with one thread, it leaves out the time this process was not scheduled.
    """
    now = _clock(clock)
    for f in fns.values():  # warm-up
        for _ in range(3):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t = now()
            for _ in range(inner):
                f()
            times[name].append((now() - t) / inner)
    return {k: (statistics.median(v) * 1e3, min(v) * 1e3) for k, v in times.items()}


def _median_ms(fns: dict[str, Step], rounds: int, inner: int, clock: str = "wall") -> dict[str, float]:
    return {k: med for k, (med, _) in _timings(fns, rounds, inner, clock).items()}


def _layer_steps(out_f: int, in_f: int, density: float, batch: int, methods: list[str]) -> dict[str, Step]:
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(out_f, in_f, generator=gen) < density
    s = LinkStructure.from_mask(mask)
    w = torch.randn(out_f, in_f, generator=gen) * 0.05
    m = mask.float()
    x = torch.randn(batch, in_f, generator=gen).requires_grad_()
    gy = torch.randn(batch, out_f, generator=gen)
    wd = w.clone().requires_grad_()
    b = torch.zeros(out_f, requires_grad=True)
    v = s.gather(w).requires_grad_()

    def dense() -> None:
        x.grad = wd.grad = b.grad = None
        (x @ (wd * m).T + b).backward(gy)

    def gather() -> None:  # forward, grad_x, grad_values, grad_b without autograd
        xd = x.detach()
        y = torch.zeros(batch, out_f).index_add_(1, s.rows, xd[:, s.cols] * v.detach()) + b.detach()
        torch.zeros(batch, in_f).index_add_(1, s.cols, gy[:, s.rows] * v.detach())
        (gy[:, s.rows] * xd[:, s.cols]).sum(0)
        gy.sum(0)
        del y

    def sparse_step(backend: str) -> Step:  # sparse_linear on the backend named like the method
        def step() -> None:
            x.grad = v.grad = b.grad = None
            sparse_linear(x, v, s, b, backend=backend).backward(gy)

        return step

    out: dict[str, Step] = {}
    for name in methods:
        if name == "dense":
            out[name] = dense
        elif name == "gather":
            out[name] = gather
        else:
            out[name] = sparse_step(name)
    return out


def available_methods() -> list[str]:
    methods = ["dense", "torch", "gather"]
    if available():
        methods.append("cpp")
    return methods


def per_call(args: argparse.Namespace) -> None:
    methods = available_methods()
    print(f"threads={torch.get_num_threads()}  ms per forward+backward, {args.clock} clock, "
          f"median (min) of {args.rounds} rounds")
    print(f"{'layer':>12} {'density':>8} {'batch':>6} " + " ".join(f"{m:>17}" for m in methods))
    for out_f, in_f in args.shapes:
        for density in args.density:
            for batch in args.batch:
                fns = _layer_steps(out_f, in_f, density, batch, methods)
                ms = _timings(fns, args.rounds, args.inner, args.clock)
                cells = " ".join(f"{ms[m][0]:>8.3f} ({ms[m][1]:>6.3f})" for m in methods)
                print(f"{in_f:>5}->{out_f:<5} {density:>8.3%} {batch:>6} {cells}")


def sweep(args: argparse.Namespace) -> None:
    """Densities at which the sparse path (active backend) stops beating dense-masked."""
    impl = args.impl or ("cpp" if "cpp" in available_methods() else "torch")
    densities = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7]
    print(f"crossover sweep, sparse = {impl}, threads={torch.get_num_threads()}; ratio = dense / sparse")
    for out_f, in_f in args.shapes:
        for batch in args.batch:
            row = []
            for d in densities:
                ms = _median_ms(_layer_steps(out_f, in_f, d, batch, ["dense", impl]), args.rounds, args.inner,
                                args.clock)
                row.append(f"{d:.0%}:{ms['dense'] / ms[impl]:.2f}")
            print(f"{in_f}->{out_f} batch {batch}: " + "  ".join(row))


def mlp_step(args: argparse.Namespace) -> None:
    """One SGD-momentum training step of the paper MLP, dense-masked vs sparse (dense head)."""
    sizes = [784, 1568, 1568, 1568, 10]
    density = args.density[0]
    batch = args.batch[0]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dense_layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    masks = [torch.rand(b, a, generator=gen) < density for a, b in itertools.pairwise(sizes[:-1])]
    with torch.no_grad():
        for lin, m in zip(dense_layers, masks):
            lin.weight.mul_(m)
    mask_f = [m.float() for m in masks]

    def build(layers: list[nn.Module]) -> nn.Sequential:
        mods: list[nn.Module] = []
        for i, layer in enumerate(layers):
            mods.append(layer)
            if i < len(layers) - 1:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    dense_model = build(dense_layers)
    for lin, mf in zip(dense_layers[:-1], mask_f):  # the engine's gradient hook
        lin.weight.register_hook(lambda g, mf=mf: g * mf)
    dense_opt = torch.optim.SGD(dense_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    sparse_layers: list[nn.Module] = [
        SparseLinear.from_linear(copy.deepcopy(lin), m) for lin, m in zip(dense_layers[:-1], masks)
    ]
    head = nn.Linear(sizes[-2], sizes[-1])
    head.load_state_dict(dense_layers[-1].state_dict())
    sparse_model = build([*sparse_layers, head])
    sparse_opt = torch.optim.SGD(sparse_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    x = torch.randn(batch, sizes[0], generator=gen)
    y = torch.randint(0, sizes[-1], (batch,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()

    def dense_step() -> None:
        dense_opt.zero_grad()
        loss_fn(dense_model(x), y).backward()
        dense_opt.step()
        with torch.no_grad():  # the engine's post-step re-masking
            for lin, mf in zip(dense_layers[:-1], mask_f):
                lin.weight.mul_(mf)

    def sparse_step(backend: str) -> Step:  # the sparse layers on this backend
        def step() -> None:
            for layer in sparse_layers:
                layer.backend = backend
            sparse_opt.zero_grad()
            loss_fn(sparse_model(x), y).backward()
            sparse_opt.step()

        return step

    fns = {"dense": dense_step, "torch": sparse_step("torch")}
    if "cpp" in available_methods():
        fns["cpp"] = sparse_step("cpp")
    ms = _median_ms(fns, args.rounds, args.inner, args.clock)
    print(f"MLP {'-'.join(map(str, sizes))} density {density:.1%} batch {batch}, SGD momentum, "
          f"threads={torch.get_num_threads()}: ms per training step ({args.clock} clock, median of {args.rounds} rounds)")
    for k, v in ms.items():
        print(f"  {k:>6}: {v:8.3f} ms   speed-up vs dense {ms['dense'] / v:6.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=lambda s: tuple(int(v) for v in s.split("x")), nargs="+",
                   default=[(1568, 1568), (1568, 784)], help="OUTxIN, e.g. 1568x784")
    p.add_argument("--density", type=float, nargs="+", default=[0.01])
    p.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inner", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or process CPU time (steadier on a shared machine with --threads 1)")
    p.add_argument("--sweep", action="store_true", help="find the crossover density")
    p.add_argument("--mlp", action="store_true", help="time a whole MLP training step")
    p.add_argument("--impl", choices=["cpp", "torch"], default=None, help="sparse implementation for --sweep")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mlp:
        mlp_step(args)
    elif args.sweep:
        sweep(args)
    else:
        per_call(args)


if __name__ == "__main__":
    main()
