"""Two processes (gloo, CPU) mean the same as one: global-batch losses, exact resume, one index.

The multi-process side runs under ``torch.distributed.run``; this file is also the worker
script of those launches (``__main__`` at the bottom), so both sides share one builder. The
first 2-process half of every test runs in ONE launch (the ``launched`` fixture): each launch
pays seconds of imports per process.
"""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # several processes

REPO = Path(__file__).resolve().parents[1]
STAGES = ("stage1", "stage2", "clip-pretrain")
BATCH = 8  # global batch of the one-step comparison: 4 rows per process
# Adam's first step is lr * g / (|g| + eps): for gradients that are zero up to float noise
# (attention key biases, dead ReLUs) it is lr times the sign of that noise at the stages' eps.
# The comparison keeps each stage's optimiser but an eps above the noise, so equal gradients
# must give equal parameters; the gradients themselves are compared directly as well.
EPS = 1e-3


@pytest.fixture(scope="module")
def world(tiny_training_world):
    return tiny_training_world


@pytest.fixture(scope="module")
def clip_file(tiny_clip_file):
    return tiny_clip_file


def torchrun(*argv, timeout=300):
    """Run ``argv`` (a script and its arguments, or -m module ...) in 2 gloo processes."""
    from conftest import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           *map(str, argv)]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@contextmanager
def one_thread():
    """The launched processes' thread count (OMP_NUM_THREADS=1): CPU kernels may round differently
    on another, and bit-for-bit comparisons must not depend on that."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def records(run_dir):
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir):
    return [(r["step"], r["loss"]) for r in records(run_dir) if r["event"] == "step"]


def command(argv):
    """``python -m cir_demo *argv`` through the command's own parser: the top-level one imports
    every command (the app's Gradio too), seconds per process that these launches need not pay."""
    name, *rest = argv
    module = importlib.import_module(f"cir_demo.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"python -m cir_demo {name}")
    module.add_arguments(parser)
    assert module.run(parser.parse_args(list(map(str, rest)))) == 0


def run_jobs(jobs: str):
    """The worker: a JSON list of ["one-step", world, clip, out] and ["command", *argv] jobs."""
    for job, *args in json.loads(jobs):
        if job == "one-step":
            one_step(*args)
        else:
            command(args)


def stage2_args(world, clip_file):
    # 16 dress triplets / batch 4 = 4 batches an epoch, 2 rows per process; dropout 0.5 on
    return ["train", "stage2", "--data", world / "fashioniq", "--categories", "dress", "--clip", clip_file,
            "--epochs", "3", "--batch-size", "4", "--lr", "1e-3", "--seed", "4", "--device", "cpu",
            "--no-progress"]


def index_args(world, clip_file):
    # 14 images in batches of 4: process 0 encodes 4 + 4, process 1 encodes 4 + 2
    return ["index", "--data", world / "fashioniq", "--split", "val", "--category", "dress", "--clip", clip_file,
            "--batch-size", "4", "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def launched(world, clip_file, tmp_path_factory):
    """(folder, stdout) of one 2-process launch doing the first half of each test below."""
    out = tmp_path_factory.mktemp("ddp")
    jobs = [["one-step", world, clip_file, out / "one-step"],
            ["command", *stage2_args(world, clip_file), "--out", out / "full", "--max-steps", "10"],
            ["command", *stage2_args(world, clip_file), "--out", out / "cut", "--max-steps", "6"],
            ["command", *index_args(world, clip_file), "--out", out / "index"]]
    result = torchrun(__file__, json.dumps([list(map(str, job)) for job in jobs]))
    return out, result.stdout


# ----------------------------------------------------------------- one step, 2 processes vs 1

def build(stage, world_root, clip_file):
    """(task, optimiser) of ``stage`` as its command builds them (but EPS), dropout off, one init."""
    from cir_demo.model import Combiner, load_clip
    from cir_demo.train.data import cache_triplet_features, load_train_triplets
    from cir_demo.train.pretrain import PretrainTask, captioned_images, preload_pixels
    from cir_demo.train.stage1 import Stage1Task, freeze_for
    from cir_demo.train.stage2 import Stage2Task

    torch.manual_seed(0)
    clip = load_clip("x", str(clip_file))
    root = Path(world_root) / "fashioniq"
    data = load_train_triplets(root, ["dress"])  # 16 triplets: 2 global batches
    if stage == "stage1":  # both towers: gradients must flow back through the gathered targets too
        params = freeze_for(clip, "both")
        task = Stage1Task(clip, data, "both", root=root, categories=["dress"], seed=1, device="cpu", provenance={},
                          progress=False)
        return task, torch.optim.AdamW(params, lr=1e-4, eps=EPS, weight_decay=0.01)
    if stage == "stage2":
        clip.model.requires_grad_(False)
        # sharded under DDP: small batches, so that each process encodes some of them
        cache = cache_triplet_features(clip, data, batch_size=8, text_batch_size=24, progress=False)
        combiner = Combiner(96, 384, 768, dropout=0.0)
        task = Stage2Task(clip, combiner, cache, [], seed=1, device="cpu", provenance={})
        return task, torch.optim.Adam(combiner.parameters(), lr=1e-3, eps=EPS)
    paths, captions = captioned_images([root], "train")
    pixels = preload_pixels(clip, paths[:3 * BATCH], progress=False)
    task = PretrainTask(clip, pixels, captions[:3 * BATCH], device="cpu", provenance={})
    return task, torch.optim.AdamW(clip.model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=EPS)


def one_step(world_root, clip_file, out):
    """One optimiser step of every stage at global batch BATCH; rank 0 keeps grads and caches."""
    from cir_demo.train.distributed import rank_world
    from cir_demo.train.loop import LoopConfig, fit

    for stage in STAGES:
        task, optimizer = build(stage, world_root, clip_file)
        cfg = LoopConfig(out_dir=str(Path(out) / stage), batch_size=BATCH, seed=1, max_steps=1, progress=False)
        fit(task, optimizer, cfg)
        if rank_world()[0] == 0:
            grads = {n: p.grad for n, p in task.trainable().named_parameters() if p.grad is not None}
            extra = vars(task.cache) if stage == "stage2" else {}
            torch.save({"grads": grads, **extra}, Path(out) / stage / "extra.pt")


def test_one_ddp_step_equals_one_single_process_step_for_every_stage(world, clip_file, launched, tmp_path):
    with one_thread():
        one_step(world, clip_file, tmp_path)
    for stage in STAGES:
        ddp, single = launched[0] / "one-step" / stage, tmp_path / stage
        assert step_losses(ddp)[0][1] == pytest.approx(step_losses(single)[0][1], rel=1e-5), stage
        got, want = torch.load(ddp / "extra.pt"), torch.load(single / "extra.pt")
        assert got["grads"].keys() == want["grads"].keys() and want["grads"], stage
        for name, grad in want["grads"].items():  # Adam hides a wrong gradient scale: check it here
            scale = float(grad.abs().max())  # float32 noise of other batch shapes is ~1e-5 of it
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-4 * scale,
                                       msg=f"{stage} grad {name}")
        updated, expected = torch.load(ddp / "state.pt")["model"], torch.load(single / "state.pt")["model"]
        for name, value in expected.items():
            torch.testing.assert_close(updated[name], value, rtol=1e-5, atol=1e-6, msg=f"{stage} {name}")
        if stage == "stage2":  # the cache each process encoded a share of is the single-process one
            for key in ("ref", "target", "text", "n_variants"):
                assert torch.equal(got[key], want[key]), key


# ----------------------------------------------------------------- resume, 2 processes, dropout on

def test_two_process_resume_is_bit_identical_with_dropout(world, clip_file, launched, tmp_path):
    full, cut = launched[0] / "full", tmp_path / "cut"  # cut at step 6, inside epoch 2
    shutil.copytree(launched[0] / "cut", cut)
    shutil.copytree(launched[0] / "cut", tmp_path / "cut-1proc")
    torchrun(__file__, json.dumps([["command", *map(str, stage2_args(world, clip_file)), "--out", str(cut),
                                    "--max-steps", "10", "--resume"]]))

    resumes = [r for r in records(cut) if r["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["world"] == 2 and "note" not in resumes[0]  # streams restored
    assert step_losses(cut) == step_losses(full)  # exact floats
    assert [s for s, _ in step_losses(cut)] == list(range(1, 11))
    done, resumed = torch.load(full / "state.pt"), torch.load(cut / "state.pt")
    assert (resumed["step"], resumed["epoch"], resumed["best"]) == (done["step"], done["epoch"], done["best"])
    for name, value in done["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    for rank in (0, 1):  # each process's dropout stream continued as its own
        assert torch.equal(resumed["rng"][rank]["cpu"], done["rng"][rank]["cpu"])
    assert not torch.equal(done["rng"][0]["cpu"], done["rng"][1]["cpu"])  # ranks draw different masks

    # the stated rule on another number of processes: it goes on, with re-seeded dropout streams
    with one_thread():
        command([*stage2_args(world, clip_file), "--out", tmp_path / "cut-1proc", "--max-steps", "10", "--resume"])
    notes = [r for r in records(tmp_path / "cut-1proc") if r["event"] == "resume"]
    assert len(notes) == 1 and "re-seeded" in notes[0]["note"] and notes[0]["world"] == 1
    assert [s for s, _ in step_losses(tmp_path / "cut-1proc")] == list(range(1, 11))


# ----------------------------------------------------------------- sharded index build

def test_two_process_index_equals_the_single_process_index(world, clip_file, launched, tmp_path):
    sharded, single = launched[0] / "index", tmp_path / "single"
    with one_thread():
        command([*index_args(world, clip_file), "--out", single])
    assert len([line for line in launched[1].splitlines() if line.startswith('{"index"')]) == 1  # rank 0's
    for name in ("features.safetensors", "names.json"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name
    manifests = [json.loads((folder / "manifest.json").read_text()) for folder in (sharded, single)]
    for manifest in manifests:
        manifest.pop("rebuild_command")  # names the launcher's command line
    assert manifests[0] == manifests[1]


# ----------------------------------------------------------------- in-process pieces

def test_sharded_encoding_takes_whole_batches_and_covers_every_row_once():
    from cir_demo.train.distributed import batch_shard

    shards = [batch_shard(14, 4, rank, 3) for rank in range(3)]
    assert shards == [[0, 1, 2, 3, 12, 13], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert batch_shard(3, 4, 1, 2) == []  # a process with no batch encodes nothing, and still gathers


def test_each_process_restores_only_its_own_generators():
    from cir_demo.train.distributed import rng_state, set_rng_state

    cpu = torch.device("cpu")
    state = rng_state(cpu)
    assert state["cuda"] is None  # a CPU process keeps no CUDA stream (and never every GPU's)
    expected = torch.rand(3)
    assert set_rng_state(state, cpu) and torch.equal(torch.rand(3), expected)
    # a stream saved on a GPU cannot apply on the CPU: reported, not an IndexError
    assert set_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, cpu) is False


if __name__ == "__main__":  # the worker side of the launches above
    from cir_demo.train.distributed import distributed

    distributed()
    run_jobs(sys.argv[1])
