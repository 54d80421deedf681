"""A run SIGKILLed at random moments, including in the middle of its checkpoint writes, always
resumes to the uninterrupted result and leaves no temporary files behind.

The driver imports brainsparse once and forks one child per attempt (so a kill costs
milliseconds, not an interpreter start): a child resumes the run when a checkpoint exists and
starts it (``--overwrite``) otherwise. Half the kills land at a random time, half inside
``atomic_write`` right after a temporary file is written and before it is renamed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_fake_mnist

DRIVER = r'''
import json, os, random, signal, sys, time
import torch
torch.set_num_threads(1)
from brainsparse.cli import main
import brainsparse.data, brainsparse.report, brainsparse.train.classification  # noqa: E401 - import once, before forking
torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # imports torch's lazy optimizer machinery
import io, matplotlib.pyplot as plt  # noqa: E401 - load the fonts once, not in every child
fig, ax = plt.subplots()
ax.plot([0, 1], [0, 1], label="x")
ax.legend()
ax.set_title("warm-up")
fig.savefig(io.BytesIO(), format="png")
plt.close(fig)

data, root, kills, seed, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]


def argv(out, resume):
    a = ["train", "--dataset", "mnist", "--data-dir", data, "--method", "chts", "--density", "0.2",
         "--hidden", "16,16", "--train-subset", "96", "--batch-size", "16", "--epochs", epochs,
         "--update-every", "4", "--device", "cpu", "--no-progress", "--out", out]
    return a + (["--resume"] if resume else ["--overwrite"])


def child(out, die_at_write=None):
    resume = os.path.exists(os.path.join(out, "checkpoint.pt"))
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        if die_at_write is not None:  # die with the temporary file written but not yet renamed
            real, count = os.replace, [0]

            def replace(src, dst):
                count[0] += 1
                if count[0] == die_at_write:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(src, dst)

            os.replace = replace
        try:
            rc = main(argv(out, resume))
        except BaseException:
            rc = 99
        os._exit(rc)
    return pid


def finish(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


t0 = time.perf_counter()
assert finish(child(os.path.join(root, "reference"))) == 0
T = time.perf_counter() - t0
rng = random.Random(seed)
episodes, delivered, at_write, n = [], 0, 0, 0
out = os.path.join(root, "ep0")
while delivered < kills:
    if delivered % 2:
        pid = child(out, die_at_write=rng.randint(1, 3 * int(epochs)))
        rc = finish(pid)
        if rc == -signal.SIGKILL:
            delivered, at_write = delivered + 1, at_write + 1
            continue
    else:
        pid = child(out)
        time.sleep(rng.uniform(0, 0.45 * T))
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            delivered += 1
            continue
        rc = os.waitstatus_to_exitcode(status)
    assert rc == 0, rc
    episodes.append(out)
    n += 1
    out = os.path.join(root, f"ep{n}")
if os.path.exists(out):
    assert finish(child(out)) == 0
    episodes.append(out)
print(json.dumps({"seconds": T, "episodes": episodes, "kills": delivered, "at_write": at_write}))
'''

TIMES = ("epoch_time_s", "update_time_s", "time_s", "wall_time_s", "train_time_s")


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for key in TIMES:
            row.pop(key, None)
    return rows


def _kill_and_resume(tmp_path: Path, kills: int, seed: int, epochs: int) -> None:
    data = make_fake_mnist(tmp_path / "mnist", n_train=120, n_test=60)
    root = tmp_path / "runs"
    root.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(data), str(root), str(kills), str(seed), str(epochs)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kills"] == kills and result["at_write"] >= kills // 3, result
    reference = root / "reference"
    want_rows = _rows(reference)
    want_model = torch.load(reference / "checkpoint.pt", weights_only=True)["model"]
    want_summary = json.loads((reference / "summary.json").read_text())
    assert len(want_rows) == epochs
    assert result["episodes"]
    for folder in map(Path, result["episodes"]):
        assert _rows(folder) == want_rows, folder
        state = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == epochs
        for key, value in want_model.items():
            assert torch.equal(state["model"][key], value), (folder, key)
        summary = json.loads((folder / "summary.json").read_text())
        for key in TIMES:
            summary.pop(key, None)
            want_summary.pop(key, None)
        assert summary == want_summary
    for folder in root.iterdir():  # every run finished at last: no temporary file, half swap or lock left
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
        assert leftovers == [], (folder, leftovers)


def test_run_killed_at_20_random_moments_resumes_to_the_same_result(tmp_path):
    _kill_and_resume(tmp_path, kills=20, seed=0, epochs=4)


@pytest.mark.slow
def test_run_killed_many_times_resumes_to_the_same_result(tmp_path):
    _kill_and_resume(tmp_path, kills=80, seed=1, epochs=8)
