"""Hostile and careless command lines against every command, in-process.

Every bad input must end with a non-zero exit, exactly one ``brainsparse: error:`` line on
stderr, no traceback, and every run folder that existed before byte-identical afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainsparse.cli import main

from conftest import make_fake_mnist
from test_translation import write_corpus



def cls_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "mnist", "--data-dir", str(data), "--method", "set", "--density", "0.2",
            "--hidden", "8", "--train-subset", "64", "--epochs", "1", "--device", "cpu", "--no-progress",
            "--out", str(out), *extra]


def mt_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--task", "translation", "--data-dir", str(corpus), "--model", "tiny", "--method", "set",
            "--density", "0.3", "--steps", "4", "--eval-every", "2", "--batch-tokens", "300", "--warmup", "2",
            "--vocab-size", "60", "--device", "cpu", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Finished runs (classification, translation, a comparison) and damaged copies of them."""
    root = tmp_path_factory.mktemp("fuzz")
    data = make_fake_mnist(root / "data" / "mnist", n_train=200, n_test=60)
    corpus = write_corpus(root / "data" / "corpus", n_train=200, n_eval=12)
    runs = root / "runs"
    assert main(cls_args(data, runs / "cls")) == 0
    assert main(mt_args(corpus, runs / "mt")) == 0
    assert main(["compare", "--dataset", "mnist", "--data-dir", str(data), "--methods", "set", "--seeds", "0",
                 "--density", "0.2", "--hidden", "8", "--train-subset", "64", "--epochs", "1", "--device", "cpu",
                 "--no-progress", "--out", str(runs / "cmp")]) == 0
    damaged = {}
    ck = (runs / "cls" / "checkpoint.pt").read_bytes()
    variants = {
        "truncated": ck[: len(ck) // 2],
        "empty": b"",
        "random": random.Random(0).randbytes(4096),
        "text": b"not a checkpoint\n",
        "zip-header-only": ck[:64],
    }
    for name, content in variants.items():
        folder = runs / f"cls-ck-{name}"
        shutil.copytree(runs / "cls", folder)
        (folder / "checkpoint.pt").write_bytes(content)
        damaged[f"ck-{name}"] = folder
    folder = runs / "cls-ck-dir"
    shutil.copytree(runs / "cls", folder)
    (folder / "checkpoint.pt").unlink()
    (folder / "checkpoint.pt").mkdir()
    damaged["ck-dir"] = folder
    for name, content in {"empty": b"", "bad": b"{not json", "list": b"[1, 2]", "nan": b'{"density": NaN}',
                          "binary": b"\xff\xfe\x00\x01", "types": b'{"task": "classification", "density": "x"}',
                          "task": b'{"task": 7}', "hidden": b'{"task": "classification", "hidden": [0]}'}.items():
        folder = runs / f"cls-config-{name}"
        shutil.copytree(runs / "cls", folder)
        (folder / "config.json").write_bytes(content)
        damaged[f"config-{name}"] = folder
    folder = runs / "cls-config-missing"
    shutil.copytree(runs / "cls", folder)
    (folder / "config.json").unlink()
    damaged["config-missing"] = folder
    for name, content in {"bad": b"{oops\n", "binary": b"\xff\xfe\n", "nan": b'{"test_accuracy": NaN}\n'}.items():
        folder = runs / f"cls-metrics-{name}"
        shutil.copytree(runs / "cls", folder)
        (folder / "metrics.jsonl").write_bytes(content)
        damaged[f"metrics-{name}"] = folder
    for name, content in {"empty": b"", "random": random.Random(1).randbytes(512)}.items():
        folder = runs / f"mt-vocab-{name}"
        shutil.copytree(runs / "mt", folder)
        (folder / "vocab.model").write_bytes(content)
        damaged[f"vocab-{name}"] = folder
    for name in ("truncated", "empty", "random"):
        folder = runs / f"mt-ck-{name}"
        shutil.copytree(runs / "mt", folder)
        (folder / "checkpoint.pt").write_bytes(variants[name])
        damaged[f"mt-ck-{name}"] = folder
    folder = runs / "mt-target"
    shutil.copytree(runs / "mt", folder)
    text = (folder / "config.json").read_text().replace('"target": null', '"target": "de/../../x"')
    (folder / "config.json").write_text(text)
    damaged["mt-target"] = folder
    for name, content in {"bad": b"{", "noscore": b'{"method": "set"}', "nan": b'{"final_test_accuracy": NaN}'}.items():
        folder = runs / f"cmp-summary-{name}"
        shutil.copytree(runs / "cmp", folder)
        (folder / "set-s0" / "summary.json").write_bytes(content)
        damaged[f"summary-{name}"] = folder
    for name, content in {"bad": b"{oops\n", "binary": b"\xff\n"}.items():
        folder = runs / f"cmp-summary-metrics-{name}"
        shutil.copytree(runs / "cmp", folder)
        (folder / "set-s0" / "metrics.jsonl").write_bytes(content)
        damaged[f"summary-metrics-{name}"] = folder
    scratch = root / "scratch"
    scratch.mkdir()
    (scratch / "afile").write_text("x")
    (scratch / "binary.txt").write_bytes(b"\x00\x01\x02binary\xff")
    (scratch / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (scratch / "ok.txt").write_text("a dog runs\n")
    return {"root": root, "data": data, "corpus": corpus, "runs": runs, "damaged": damaged, "scratch": scratch}


def snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file (and the list of folders) under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def check_refused(argv: list[str], world, capsys, contains: str | None = None) -> str:
    """Run ``argv``; assert the refusal contract; return the error line."""
    before = snapshot(world["runs"])
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's --help etc. must not be used here
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc not in (0, None), (argv, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("brainsparse: error:")]
    assert len(errors) == 1 and len(lines) == 1, (argv, err)  # one line on stderr: the error
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    assert snapshot(world["runs"]) == before, argv
    if contains is not None:
        assert contains in errors[0], (argv, errors[0])
    return errors[0]


def static_cases(w) -> list[tuple[list[str], str | None]]:
    data, corpus, runs, d, s = w["data"], w["corpus"], w["runs"], w["damaged"], w["scratch"]
    new = s / "new-run"
    cls = lambda *extra: cls_args(data, new, *extra)  # noqa: E731
    cases: list[tuple[list[str], str | None]] = [
        # ---------------------------------------------------------------- train: options
        (cls("--density", "0"), "density"),
        (cls("--density", "1.5"), "density"),
        (cls("--density", "nan"), "density"),
        (cls("--density=-inf"), "density"),
        (cls("--density", "abc"), "--density"),
        (cls("--epochs", "0"), "epochs"),
        (cls("--epochs=-3"), "epochs"),
        (cls("--epochs", "1.5"), "--epochs"),
        (cls("--hidden", ""), "hidden"),
        (cls("--hidden", ","), "hidden"),
        (cls("--hidden", "8,0"), "hidden"),
        (cls("--hidden", "8,-1"), "hidden"),
        (cls("--hidden", "a,b"), "--hidden"),
        (cls("--lr", "0"), "lr"),
        (cls("--lr=-1"), "lr"),
        (cls("--lr", "inf"), "lr"),
        (cls("--lr", "nan"), "lr"),
        (cls("--momentum=-0.1"), "momentum"),
        (cls("--momentum", "nan"), "momentum"),
        (cls("--momentum", "1.5"), "momentum"),
        (cls("--weight-decay=-1e-4"), "weight_decay"),
        (cls("--weight-decay", "nan"), "weight_decay"),
        (cls("--weight-decay", "inf"), "weight_decay"),
        (cls("--beta", "0.3"), "--beta"),  # set starts from uniform: beta means nothing
        (cls("--r", "0.3"), "--r"),
        (cls("--init", "bsw", "--r", "0.3"), "--r"),
        (cls("--init", "bsw", "--beta", "2"), "beta"),
        (cls("--init", "brf", "--r=-0.5"), "r"),
        (cls("--init", "nosuch"), "init"),
        (cls("--method", "nosuch"), "nosuch"),
        (cls("--kernel", "gpu-magic"), "kernel"),
        (cls("--device", "tpu"), "device"),
        (cls("--seed=-1"), "seed"),
        (cls("--seed", str(2**63)), "seed"),
        (cls("--seed", str(2**40)), "seed"),
        (cls("--batch-size", "0"), "batch_size"),
        (cls("--train-subset", "0"), "train_subset"),
        (cls("--update-every", "0"), "update_every"),
        (cls("--threads", "0"), "threads"),
        (cls("--steps", "10"), "--steps"),
        (cls("--beam", "2"), "--beam"),
        (cls("--dataset", "nosuch"), "nosuch"),
        (cls("--data-dir", str(s / "missing")), None),
        (cls("--ch-form", "other"), "--ch-form"),
        (cls("--nosuch-option"), "nosuch"),
        (["train", "--task", "vision"], "--task"),
        (cls_args(data, s / "x\udcffy" / "sub", "--resume"), "cannot resume"),  # undecodable bytes in a path
        (cls("--method", "\udcff\u2028"), "unknown method"),
        (cls("--hidden", "100000000,100000000"), "out of memory"),
        (cls("--threads", "100000"), "threads"),
        (["analyze", runs / "cls", "--seed=-5"], "seed"),
        (["nosuch-command"], None),
        ([], None),
        # ---------------------------------------------------------------- train: run folders
        (cls_args(data, runs / "cls"), "already holds a run"),
        (cls_args(data, runs / "cls", "--epochs", "2"), "already holds a run"),
        (cls_args(data, s / "afile"), "not a folder"),
        (cls_args(data, s / "afile" / "sub"), "cannot be created"),
        (cls_args(data, s / "nope", "--resume"), "checkpoint"),
        (["train", "--resume", "--out", str(runs / "cls"), "--lr", "0.5"], "--lr"),
        (["train", "--resume", "--out", str(runs / "cls"), "--epochs", "3"], "--epochs"),
        (["train", "--resume", "--out", str(runs / "cls"), "--method", "chts"], "--method"),
        (["train", "--resume", "--out", str(runs / "cls"), "--seed", "5"], "--seed"),
        (["train", "--resume", "--out", str(runs / "mt"), "--steps", "99"], "--steps"),
        (["train", "--resume", "--out", str(runs / "cls"), "--hidden", "16"], "--hidden"),
        (["train", "--resume", "--out", str(runs / "cls"), "--task", "translation"], "--task"),
        # ---------------------------------------------------------------- translation options
        (mt_args(corpus, new, "--target", "de/../../x"), "target"),
        (mt_args(corpus, new, "--source", "../en"), "source"),
        (mt_args(corpus, new, "--target", "en"), None),
        (mt_args(corpus, new, "--model", "huge"), "huge"),
        (mt_args(corpus, new, "--label-smoothing", "1"), "label_smoothing"),
        (mt_args(corpus, new, "--dropout=-0.1"), "dropout"),
        (mt_args(corpus, new, "--dropout", "nan"), "dropout"),
        (mt_args(corpus, new, "--beam", "0"), "beam"),
        (mt_args(corpus, new, "--weight-decay=-1"), "weight_decay"),
        (mt_args(corpus, new, "--epochs", "2"), "--epochs"),
        (mt_args(corpus, new, "--hidden", "8"), "--hidden"),
        (mt_args(corpus, runs / "mt"), "already holds a run"),
        # ---------------------------------------------------------------- lm options
        (["train", "--task", "lm", "--dataset", "nosuch", "--out", new], "nosuch"),
        (["train", "--task", "lm", "--model", "gpt-5", "--out", new], "gpt-5"),
        (["train", "--task", "lm", "--init", "csti", "--out", new], "csti"),
        (["train", "--task", "lm", "--warmup=-1", "--out", new], "warmup"),
        (["train", "--task", "lm", "--seq-len", "0", "--out", new], "seq_len"),
        (["train", "--task", "lm", "--momentum", "0.5", "--out", new], "--momentum"),
        # ---------------------------------------------------------------- damaged run folders
        *[(["train", "--resume", "--out", d[k], "--no-progress"], None) for k in sorted(d)
          if k.startswith(("ck-", "config-", "mt-ck-", "vocab-", "mt-target"))],
        *[(["analyze", d[k], "--out", s / f"analysis-{k}"], None) for k in sorted(d)
          if k.startswith(("ck-", "metrics-", "config-empty", "config-bad", "config-list", "config-nan", "config-binary"))],
        *[(["translate", d[k], "--input", s / "ok.txt", "--output", s / "out.txt"], None) for k in sorted(d)
          if k.startswith(("mt-ck-", "vocab-", "mt-target"))],
        # ---------------------------------------------------------------- translate
        (["translate", runs / "mt", "--input", s / "binary.txt"], "binary"),
        (["translate", runs / "mt", "--input", s / "latin1.txt"], "UTF-8"),
        (["translate", runs / "mt", "--input", s / "missing.txt"], "does not exist"),
        (["translate", runs / "mt", "--input", s], "not a file"),
        (["translate", runs / "mt", "--input", s / "ok.txt", "--output", s], "folder"),
        (["translate", runs / "mt", "--input", s / "ok.txt", "--output", s / "no" / "x.txt"], "does not exist"),
        (["translate", runs / "mt", "--input", s / "ok.txt", "--beam", "0"], "beam"),
        (["translate", runs / "mt", "--input", s / "ok.txt", "--output", runs / "mt" / "checkpoint.pt"], "replace"),
        (["translate", runs / "mt", "--input", s / "ok.txt", "--beam", "100000"], "beam"),
        (mt_args(corpus, new, "--beam", "100000"), "beam"),
        (["translate", runs / "cls", "--input", s / "ok.txt"], "not a translation run folder"),
        (["translate", runs / "cls", "--input", s / "ok.txt"], None),
        (["translate", s / "missing-run", "--input", s / "ok.txt"], "not a translation run folder"),
        # ---------------------------------------------------------------- analyze
        (["analyze", s / "missing-run"], "does not exist"),
        (["analyze", s / "afile"], "not a folder"),
        (["analyze", runs / "cls", "--out", s / "afile"], "not a folder"),
        (["analyze", runs / "cls", "--seed", "x"], "--seed"),
        # ---------------------------------------------------------------- compare
        (["compare", "--dataset", "mnist", "--data-dir", data, "--seeds", "0,0,0", "--out", s / "c1"], "repeats"),
        (["compare", "--dataset", "mnist", "--data-dir", data, "--methods", "set,set", "--out", s / "c1"], "repeats"),
        (["compare", "--dataset", "mnist", "--data-dir", data, "--methods", "set,nosuch", "--out", s / "c1"], "nosuch"),
        (["compare", "--dataset", "mnist", "--data-dir", data, "--methods", "", "--out", s / "c1"], "no methods"),
        (["compare", "--dataset", "mnist", "--data-dir", data, "--seeds", "", "--out", s / "c1"], "no seeds"),
        (["compare", "--dataset", "mnist", "--data-dir", data, "--seeds=-1", "--out", s / "c1"], "seed"),
        (["compare", "--dataset", "mnist", "--data-dir", data, "--out", s / "afile"], "not a folder"),
        (["compare", "--dataset", "mnist", "--data-dir", data, "--density", "2", "--out", s / "c1"], "density"),
        (["compare", "--dataset", "mnist", "--data-dir", data, "--methods", "set", "--seeds", "0", "--density", "0.2",
          "--hidden", "8", "--train-subset", "64", "--epochs", "2", "--device", "cpu", "--no-progress",
          "--out", runs / "cmp"], "other settings"),
        *[(["compare", "--dataset", "mnist", "--data-dir", data, "--methods", "set", "--seeds", "0", "--density", "0.2",
            "--hidden", "8", "--train-subset", "64", "--epochs", "1", "--device", "cpu", "--no-progress",
            "--out", d[k]], None) for k in sorted(d) if k.startswith("summary-")],
        # ---------------------------------------------------------------- methods, recipes, reproduce
        (["methods", "extra"], "unrecognized"),
        (["recipes", "--x"], "unrecognized"),
        (["reproduce", "nosuch", "--out", s / "r1"], "nosuch"),
        (["reproduce", "../../etc/passwd", "--out", s / "r1"], "recipe"),
        (["reproduce", "mlp-mnist", "--seeds", "0,0", "--out", s / "r1"], "seed"),
        (["reproduce", "mlp-mnist", "--epochs", "0", "--out", s / "r1"], "epochs"),
        (cls("--recipe", "nosuch"), "recipe"),
        # ---------------------------------------------------------------- bench
        (["bench", "--out", s / "afile"], "not a folder"),
        (["bench", "--parts", "nosuch", "--out", s / "b"], "nosuch"),
        (["bench", "--out", s / "afile" / "b"], "cannot be created"),
    ]
    return cases


def test_static_bad_inputs(world, capsys):
    cases = static_cases(world)
    assert len(cases) >= 100
    for argv, contains in cases:
        check_refused(argv, world, capsys, contains)


def test_target_language_from_config_cannot_escape(world, capsys):
    check_refused(["translate", world["damaged"]["mt-target"], "--input", world["scratch"] / "ok.txt"],
                  world, capsys, "target")
    assert not (world["root"] / "x").exists()


def test_quick_bench_does_not_replace_full_results(world, capsys):
    folder = world["scratch"] / "bench-full"
    folder.mkdir(exist_ok=True)
    (folder / "bench.json").write_text('{"quick": false, "memory": {"x": 1}}\n')
    check_refused(["bench", "--quick", "--parts", "memory", "--out", folder], world, capsys, "--quick")
    damaged = world["scratch"] / "bench-damaged"
    damaged.mkdir(exist_ok=True)
    (damaged / "bench.json").write_text('{"quick": true, "memory": NaN')
    check_refused(["bench", "--quick", "--parts", "memory", "--out", damaged], world, capsys, "bench.json")
    assert (folder / "bench.json").read_text() == '{"quick": false, "memory": {"x": 1}}\n'


_BAD_FLOATS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "NaN", "1e400", "-0.0000001", "", " ", "0x10", "1,5", "--1"]),
    st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False).map(repr),
    st.text(alphabet="abcxyz!/\\ .", min_size=1, max_size=8),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--density", "--lr", "--momentum", "--weight-decay", "--beta", "--r",
                               "--drop-fraction"]),
       value=_BAD_FLOATS)
def test_fuzz_bad_numbers(world, capsys, option, value):
    argv = cls_args(world["data"], world["scratch"] / "new-run", "--init", "bsw")
    argv += [f"{option}={value}"]
    check_refused(argv, world, capsys)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--epochs", "--batch-size", "--train-subset", "--update-every", "--seed", "--threads"]),
       value=st.one_of(st.integers(max_value=0), st.integers(min_value=2**32, max_value=2**70)))
def test_fuzz_bad_integers(world, capsys, option, value):
    if option != "--seed" and value > 0:
        value = -value
    if option == "--seed" and 0 <= value < 2**32:
        value = -1 - value
    argv = cls_args(world["data"], world["scratch"] / "new-run") + [f"{option}={value}"]
    check_refused(argv, world, capsys)


_NAME = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--method", "--init", "--kernel", "--device", "--dataset"]), value=_NAME)
def test_fuzz_bad_names(world, capsys, option, value):
    from brainsparse.methods import INITS, PRESETS

    allowed = {"--method": set(PRESETS), "--init": set(INITS), "--kernel": {"auto", "dense", "sparse"},
               "--device": {"auto", "cpu"}, "--dataset": {"mnist", "fashion-mnist"}}[option]
    if value.strip().lower() in allowed or value.lower().startswith(("emnist", "cuda")) or value.startswith("-"):
        return
    argv = cls_args(world["data"], world["scratch"] / "new-run") + [f"{option}={value}"]
    check_refused(argv, world, capsys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(min_size=1, max_size=10), which=st.sampled_from(["--source", "--target"]))
def test_fuzz_bad_language_codes(world, capsys, value, which):
    import re

    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,15}", value) or value.startswith("-"):
        return
    argv = mt_args(world["corpus"], world["scratch"] / "new-run") + [f"{which}={value}"]
    check_refused(argv, world, capsys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=64))
def test_fuzz_translate_binary_input(world, capsys, raw):
    try:
        raw.decode("utf-8")
        if b"\0" not in raw:
            raw = raw + b"\xff\x00"
    except UnicodeDecodeError:
        pass
    path = world["scratch"] / "fuzz-input.bin"
    path.write_bytes(raw)
    check_refused(["translate", world["runs"] / "mt", "--input", path], world, capsys)


# ------------------------------------------------------------------------------------ crafted checkpoints
class _Evil:
    """Unpickling this creates a file: what a crafted checkpoint could do with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(folder: Path, marker: Path, legacy: bool) -> None:
    import pickle

    import torch

    state = {"engine": _Evil(marker), "model": {}, "epoch": 0, "step": 0}
    if legacy:
        (folder / "checkpoint.pt").write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, folder / "checkpoint.pt")


@pytest.mark.parametrize("legacy", [False, True])
def test_crafted_checkpoint_runs_nothing_on_any_command(world, capsys, legacy):
    runs, s = world["runs"], world["scratch"]
    marker = s / f"pwned-{legacy}"
    cls = runs / f"evil-cls-{legacy}"
    mt = runs / f"evil-mt-{legacy}"
    cmp = runs / f"evil-cmp-{legacy}"
    for src, dst in ((runs / "cls", cls), (runs / "mt", mt), (runs / "cmp", cmp)):
        shutil.copytree(src, dst)
    for folder in (cls, mt, cmp / "set-s0"):
        _plant(folder, marker, legacy)
    (cmp / "set-s0" / "summary.json").unlink()  # compare then resumes the run, loading its checkpoint
    commands = [
        ["train", "--resume", "--out", cls, "--no-progress"],
        ["train", "--resume", "--out", mt, "--no-progress"],
        ["translate", mt, "--input", s / "ok.txt", "--output", s / "evil.txt"],
        ["analyze", cls, "--out", s / "evil-analysis"],
        ["compare", "--dataset", "mnist", "--data-dir", world["data"], "--methods", "set", "--seeds", "0",
         "--density", "0.2", "--hidden", "8", "--train-subset", "64", "--epochs", "1", "--device", "cpu",
         "--no-progress", "--out", cmp],
    ]
    for argv in commands:
        line = check_refused(argv, world, capsys)
        assert "checkpoint" in line and "not loaded" in line, line
        assert not marker.exists(), argv


def test_no_unsafe_loading_in_the_package():
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "brainsparse"
    for path in src.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert not re.search(r"pickle\.loads?\(|import dill|cloudpickle", text), path
        assert "weights_only=False" not in text, path


# ------------------------------------------------------------------------------------ strict JSON, divergence
def _strict_load(text: str):
    import json

    def reject(name):
        raise ValueError(name)

    return json.loads(text, parse_constant=reject)


def test_every_json_file_written_is_strict(world):
    seen = 0
    for name in ("cls", "mt", "cmp"):  # the runs as written (the other folders are damaged on purpose)
        for path in (world["runs"] / name).rglob("*"):
            if path.suffix == ".json":
                _strict_load(path.read_text())
                seen += 1
            elif path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    _strict_load(line)
                seen += 1
    assert seen >= 9


def test_diverged_run_stops_with_one_error_and_keeps_the_last_checkpoint(world, capsys):
    capsys.readouterr()
    out2 = world["scratch"] / "diverge"
    argv = cls_args(world["data"], out2, "--epochs", "3", "--batch-size", "8", "--lr", "1e9")
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("brainsparse: error: training diverged"), err
    assert "step" in lines[0] and "--lr" in lines[0]
    assert not (out2 / "summary.json").exists()
    for path in out2.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            _strict_load(line)
    if (out2 / "metrics.jsonl").exists():  # an epoch finished before the loss blew up: its checkpoint stays
        from brainsparse.train.checkpoint import load_checkpoint

        rows = (out2 / "metrics.jsonl").read_text().splitlines()
        assert load_checkpoint(out2 / "checkpoint.pt")["epoch"] == len(rows)
    assert not list(out2.glob(".*.tmp")) and not (out2 / ".lock").exists()


def test_overwrite_that_fails_early_keeps_the_old_run(world, capsys):
    old = world["scratch"] / "keep"
    shutil.copytree(world["runs"] / "cls", old)
    before = snapshot(old)
    argv = cls_args(world["data"], old, "--overwrite", "--lr", "1e9", "--batch-size", "4")
    capsys.readouterr()
    assert main(argv) == 2
    assert "diverged" in capsys.readouterr().err
    assert snapshot(old) == before
    # an empty test split of a corpus is refused before the old translation run is touched
    corpus = write_corpus(world["scratch"] / "empty-test-corpus", n_eval=0)
    mt = world["scratch"] / "keep-mt"
    shutil.copytree(world["runs"] / "mt", mt)
    before = snapshot(mt)
    assert main(mt_args(corpus, mt, "--overwrite")) == 2
    assert "holds no sentences" in capsys.readouterr().err
    assert snapshot(mt) == before
    # a successful overwrite replaces the run and leaves nothing of the swap behind
    assert main(cls_args(world["data"], old, "--overwrite", "--seed", "3")) == 0
    assert _strict_load((old / "config.json").read_text())["seed"] == 3
    assert not any(p.name.startswith((".overwrite", ".lock")) or p.name.endswith(".tmp") for p in old.iterdir())


def test_second_run_into_a_locked_folder_is_refused(world, capsys):
    from brainsparse.train.common import lock_run_folder, unlock_run_folder

    out = world["scratch"] / "locked"
    out.mkdir()
    fd = lock_run_folder(out)  # another open file description: conflicts like another process
    try:
        capsys.readouterr()
        assert main(cls_args(world["data"], out)) == 2
        err = capsys.readouterr().err
        assert f"in use by process {__import__('os').getpid()}" in err, err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        unlock_run_folder(out, fd)
    assert main(cls_args(world["data"], out)) == 0
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_concurrent_runs_into_one_folder(world, tmp_path):
    """Two processes started together into one --out: one runs, the other is refused."""
    import os
    import subprocess
    import sys

    out = tmp_path / "shared"
    code = ("import sys; from brainsparse.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = cls_args(world["data"], out, "--epochs", "3")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, env=env, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "brainsparse: error:" in err and ("in use by process" in err or "already holds a run" in err), err
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3


def test_stale_temporary_files_are_removed_on_resume(world, capsys):
    out = world["scratch"] / "stale"
    shutil.copytree(world["runs"] / "cls", out)
    (out / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    (out / ".metrics.jsonl.abc.tmp").write_text("{")
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------------ translate lines
def test_translate_keeps_one_output_line_per_input_line(world, capsys):
    src = world["scratch"] / "odd-lines.txt"
    src.write_bytes("a dog\x0bruns\nthe cat\u2028big\r\n\x0c\n\u0085a\x1c\x1d\x1e\nlast line without newline".encode())
    dst = world["scratch"] / "odd-lines.out"
    assert main(["translate", str(world["runs"] / "mt"), "--input", str(src), "--output", str(dst)]) == 0
    text = dst.read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 5


# ------------------------------------------------------------------------------------ bounded IDX reading
def test_idx_bomb_and_empty_files_are_refused_from_the_header(tmp_path):
    import struct

    from brainsparse.data import load_mnist_family
    from brainsparse.errors import DataNotFoundError

    def idx(shape, payload=b""):
        return bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload

    for name, (images, labels, match) in {
        "bomb": (idx((3_000_000, 28, 28)), idx((3_000_000,)), "limit"),
        "empty": (idx((0, 28, 28)), idx((0,)), "N >= 1"),
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        for split in ("train", "t10k"):
            with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as fh:
                fh.write(images)
                if name == "bomb":  # a stream that would inflate far beyond what the header allows
                    fh.write(bytes(1 << 20))
            with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as fh:
                fh.write(labels)
        with pytest.raises(DataNotFoundError, match=match):
            load_mnist_family("mnist", folder, download=False)


def test_interrupted_overwrite_is_rolled_back_or_forward(world, capsys):
    import json

    # killed before the commit: the staging folder is dropped, the old run goes on
    old = world["scratch"] / "rollback"
    shutil.copytree(world["runs"] / "cls", old)
    (old / ".overwrite").mkdir()
    (old / ".overwrite" / "config.json").write_text("{half")
    assert main(["train", "--resume", "--out", str(old), "--no-progress"]) == 0
    assert not (old / ".overwrite").exists()
    assert json.loads((old / "config.json").read_text())["seed"] == 0
    # killed after the commit, in the middle of moving the files: the swap is finished first
    new = world["scratch"] / "newrun"
    assert main(cls_args(world["data"], new, "--seed", "7")) == 0
    old = world["scratch"] / "rollforward"
    shutil.copytree(world["runs"] / "cls", old)
    shutil.copytree(new, old / ".overwrite.ready")
    names = sorted(p.name for p in new.iterdir())
    (old / ".overwrite.ready" / ".files").write_text("\n".join(names) + "\n")  # written at the commit
    (old / "summary.json").write_text("{}")  # the old run's: it must go, the new run has its own
    (old / ".overwrite.ready" / "summary.json").unlink()  # ... which it had not written yet here
    os_replace = __import__("os").replace
    os_replace(old / ".overwrite.ready" / "config.json", old / "config.json")  # moved before the kill
    assert main(["train", "--resume", "--out", str(old), "--no-progress"]) == 0
    assert not (old / ".overwrite.ready").exists()
    assert json.loads((old / "config.json").read_text())["seed"] == 7
    assert (old / "metrics.jsonl").read_text() == (new / "metrics.jsonl").read_text()
    assert json.loads((old / "summary.json").read_text())["seed"] == 7  # rewritten by the resumed run


@pytest.mark.filterwarnings("error")
def test_diverged_translation_run_stops_with_one_error(world, capsys):
    out = world["scratch"] / "diverge-mt"
    capsys.readouterr()
    assert main(mt_args(world["corpus"], out, "--lr", "1e30", "--steps", "8")) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "training diverged" in lines[0] and "step" in lines[0] and "--lr" in lines[0], lines
    assert not (out / "summary.json").exists()
