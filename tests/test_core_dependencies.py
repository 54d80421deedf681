"""The library core needs only torch, numpy and safetensors; the runner's extra is optional."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from brainsparse._optional import RUNNER_PACKAGES

# Makes the runner's packages unimportable (None in sys.modules), as without the `runner` extra.
_BLOCK = f"import sys\nfor _name in {sorted(RUNNER_PACKAGES)!r}:\n    sys.modules[_name] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_import_brainsparse_loads_no_runner_package():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, brainsparse; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split()
    for name in ("matplotlib", "sacrebleu", "sentencepiece", "networkx", "scipy"):
        assert name not in out, name


def test_core_trains_without_the_runner_extra():
    proc = _run(
        """
        import torch, brainsparse as bs
        model = bs.models.MLP([20, 30, 30, 4])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        engine = bs.sparsify(model, opt, method="chts", density=0.2, update_every=2, total_steps=6, seed=0)
        for _ in range(6):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.randn(8, 20)), torch.randint(0, 4, (8,))).backward()
            opt.step()
            engine.step()
        assert len(engine.history) >= 2
        assert all(sys.modules.get(m) is None for m in ("tqdm", "matplotlib", "scipy", "networkx"))
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_cli_without_the_runner_extra_says_what_to_install():
    proc = _run("from brainsparse.cli import main; raise SystemExit(main(['train', '--epochs', '1']))")
    assert proc.returncode == 2
    assert "brainsparse[runner]" in proc.stderr and "tqdm" in proc.stderr


def test_network_measures_without_scipy_raise_a_clear_error():
    proc = _run(
        """
        import torch
        from brainsparse.errors import BrainsparseError
        from brainsparse.metrics import square_clustering
        try:
            square_clustering(torch.rand(5, 4) < 0.5)
        except BrainsparseError as exc:
            print(exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "scipy" in proc.stdout and "brainsparse[runner]" in proc.stdout
