"""The trainer end to end on a tiny MeRino: resume after SIGKILL / SIGTERM, torchrun DDP, CLI errors.

One uninterrupted reference run (through `merino-edge train`, tokenizer trained
on the fly) is compared step by step with the interrupted and the distributed
runs, which reuse its tokenizer and shards.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from local_text import held_out_texts, write_jsonl

from merino_edge.cli import main
from merino_edge.training import checkpoint
from merino_edge.training.config import TrainConfig, lr_at
from merino_edge.training.data import TokenShards, validation_windows
from merino_edge.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
STEPS = 20
RUN_FLAGS = [
    "--seq-len", "32", "--batch-tokens", "128", "--micro-batch", "2", "--max-steps", str(STEPS), "--warmup", "3",
    "--eval-every", "1", "--eval-tokens", "512", "--save-every", "4", "--log-every", "1", "--threads", "1", "--no-progress",
]  # fmt: skip


def _arch(path: Path, blocks, vocab: int = 512) -> Path:
    spec = {"blocks": [{"width": e, "ratio": r, "depth": d} for e, r, d in blocks], "vocab_size": vocab, "proj_dim": 64, "max_positions": 64}
    path.write_text(json.dumps(spec))
    return path


def _log(out: Path) -> list[dict]:
    path = out / checkpoint.STATE_DIR / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _losses(records: list[dict]) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["val_loss"]) for r in records if "loss" in r}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(work dir, arch.json, reference out dir) after one uninterrupted run through the CLI."""
    work = tmp_path_factory.mktemp("train")
    write_jsonl(work / "docs.jsonl", held_out_texts(80))
    arch = _arch(work / "arch.json", [(64, 2.0, 2), (128, 1.0, 1)])
    ref = work / "ref"
    assert main(["train", "--arch", str(arch), "--data", str(work / "docs.jsonl"), "--out", str(ref), "--val-fraction", "0.1", *RUN_FLAGS]) == 0
    return work, arch, ref


def _reuse(ref: Path) -> list[str]:
    """Flags that train on the reference run's shards and tokenizer."""
    return ["--data", str(ref / "data"), "--tokenizer", str(ref / "tokenizer.model")]


def _start(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    log = out / checkpoint.STATE_DIR / "log.jsonl"
    while time.monotonic() < deadline:
        if log.is_file() and any(f'"step": {s},' in log.read_text() for s in range(step, STEPS + 1)):
            return
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()}"
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout} s")


@pytest.mark.slow
def test_reference_run_writes_a_transformers_checkpoint_and_learns(setup):
    from transformers import AutoModelForCausalLM

    import merino_edge.model  # noqa: F401 - registers the Auto classes

    _, _, ref = setup
    records = _log(ref)
    assert [r["step"] for r in records] == list(range(STEPS + 1))  # step 0: validation before training
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.1
    assert records[-1]["tokens"] == STEPS * 128
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.model", "trainer_state/checkpoint.pt", "trainer_state/loss.png"):
        assert (ref / name).is_file(), name
    assert json.loads((ref / "data" / "manifest.json").read_text())["vocab_size"] == 512

    # the exported model is the trained one: it reproduces the logged final validation loss
    model = AutoModelForCausalLM.from_pretrained(ref).eval()
    windows = torch.from_numpy(validation_windows(TokenShards.open(ref / "data").stream("val"), 32, 512))
    with torch.no_grad():
        logits = model(input_ids=windows[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), windows[:, 1:].reshape(-1)).item()
    assert loss == pytest.approx(records[-1]["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_losses(setup):
    work, arch, ref = setup
    out = work / "killed"
    proc = _start([sys.executable, "-m", "merino_edge.cli", "train", "--arch", str(arch), "--out", str(out), *_reuse(ref), *RUN_FLAGS])
    _wait_for_step(proc, out, 6)  # past the checkpoint at step 4, before the one at 8
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert checkpoint.load_state(out)["step"] in (4, 8)

    result = train(
        TrainConfig(arch=arch, data=(str(ref / "data"),), out=out, tokenizer=ref / "tokenizer.model", seq_len=32, batch_tokens=128,
                    micro_batch=2, max_steps=STEPS, warmup=3, eval_every=1, eval_tokens=512, save_every=4, log_every=1,
                    threads=1, resume=True, progress=False)
    )  # fmt: skip
    assert result.steps == STEPS and not result.interrupted
    resumed = _log(out)
    assert [r["step"] for r in resumed] == list(range(STEPS + 1))  # no step lost or repeated in the log
    expected = _losses(_log(ref))
    for step, (loss, val) in _losses(resumed).items():
        assert abs(loss - expected[step][0]) <= 1e-6 and abs(val - expected[step][1]) <= 1e-6, step
    assert not list(out.glob(".save-*"))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_130(setup):
    work, arch, ref = setup
    out = work / "terminated"
    proc = _start([sys.executable, "-m", "merino_edge.cli", "train", "--arch", str(arch), "--out", str(out), *_reuse(ref), *RUN_FLAGS])
    _wait_for_step(proc, out, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    state = checkpoint.load_state(out)
    assert state["step"] == _log(out)[-1]["step"] < STEPS  # saved at the step it stopped on, not at a save_every boundary
    assert f"checkpoint saved at step {state['step']}" in err

    assert main(["train", "--arch", str(arch), "--out", str(out), *_reuse(ref), *RUN_FLAGS, "--resume"]) == 0
    expected = _losses(_log(ref))
    for step, (loss, _) in _losses(_log(out)).items():
        assert abs(loss - expected[step][0]) <= 1e-6, step


@pytest.mark.slow
def test_torchrun_two_processes_match_one(setup):
    work, arch, ref = setup
    out = work / "ddp"
    proc = _start(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "merino_edge.cli",
         "train", "--arch", str(arch), "--out", str(out), *_reuse(ref), *RUN_FLAGS]
    )  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # one process with 2 accumulation steps vs two ranks with one each, same global batch of 4 sequences
    expected = _losses(_log(ref))
    got = _losses(_log(out))
    assert sorted(got) == sorted(expected)
    for step, (loss, val) in got.items():
        assert loss == pytest.approx(expected[step][0], rel=1e-5) and val == pytest.approx(expected[step][1], rel=1e-5), step


def test_lr_schedule_is_warmup_then_linear_decay():
    cfg = TrainConfig(arch="a.json", data=(), out="o", max_tokens=1000, batch_tokens=100, warmup=2, lr=1e-3, min_lr=1e-4)
    assert cfg.total_steps() == 10
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert np.all(np.diff(lrs[1:]) <= 0) and lrs[-1] == pytest.approx(1e-4 + 0.9e-3 / 8)
    assert TrainConfig(arch="a.json", data=(), out="o", max_steps=30000).warmup_steps() == 1000  # the paper's warm-up
    assert TrainConfig(arch="a.json", data=(), out="o", max_steps=50).warmup_steps() == 5


def _one_error_line(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_bad_inputs_exit_2_with_one_line(setup, tmp_path, capsys):
    work, arch, ref = setup
    flags = ["--max-steps", "2", "--seq-len", "32", "--batch-tokens", "64", "--micro-batch", "2", "--threads", "1", "--no-progress"]
    (tmp_path / "empty.jsonl").write_text("")
    _one_error_line(capsys, ["train", "--arch", str(arch), "--data", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "a"), *flags], "no text")
    (tmp_path / "notext.jsonl").write_text('{"body": "x"}\n')
    _one_error_line(
        capsys, ["train", "--arch", str(arch), "--data", str(tmp_path / "notext.jsonl"), "--out", str(tmp_path / "b"), *flags], "notext.jsonl:1 has no string 'text' field"
    )
    bad_width = _arch(tmp_path / "bad1.json", [(100, 2.0, 1)])
    _one_error_line(capsys, ["train", "--arch", str(bad_width), *_reuse(ref), "--out", str(tmp_path / "c"), *flags], "blocks[0].width: 100")
    bad_depth = _arch(tmp_path / "bad2.json", [(64, 2.0, 9)])
    _one_error_line(capsys, ["train", "--arch", str(bad_depth), *_reuse(ref), "--out", str(tmp_path / "d"), *flags], "blocks[0].depth: 9")
    wrong_vocab = _arch(tmp_path / "vocab.json", [(64, 2.0, 1)], vocab=1024)
    _one_error_line(capsys, ["train", "--arch", str(wrong_vocab), *_reuse(ref), "--out", str(tmp_path / "e"), *flags], "has 512 pieces but the arch has vocab_size 1024")
    _one_error_line(capsys, ["train", "--arch", str(arch), *_reuse(ref), "--out", str(tmp_path / "f"), *flags, "--resume"], "nothing to resume")


def test_a_checkpoint_of_another_arch_is_refused(setup, tmp_path, capsys):
    work, arch, ref = setup
    out = tmp_path / "copy"
    shutil.copytree(ref, out, ignore=shutil.ignore_patterns("data"))
    other = _arch(tmp_path / "other.json", [(64, 1.0, 1)])
    flags = [*_reuse(ref), "--out", str(out), *RUN_FLAGS]
    _one_error_line(capsys, ["train", "--arch", str(other), *flags, "--resume"], "another arch (E64xR2xL2 | E128xR1xL1)")
    _one_error_line(capsys, ["train", "--arch", str(arch), *flags], "already holds a training run; pass --resume")
    state = checkpoint.state_path(out)
    state.write_bytes(state.read_bytes()[:100])
    _one_error_line(capsys, ["train", "--arch", str(arch), *flags, "--resume"], "is unreadable")
