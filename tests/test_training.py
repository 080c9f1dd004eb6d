"""Training commands on a tiny generated world: loss goes down, resume is exact, DDP agrees.

Multi-process equivalence (global batch, per-rank resume, sharded index) is in test_distributed.py.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cir_demo.cli import main
from cir_demo.model import load_checkpoint, load_clip
from cir_demo.train.loop import STATE_FILE, epoch_batches


@pytest.fixture(scope="module")
def world(tiny_training_world):
    return tiny_training_world


@pytest.fixture(scope="module")
def clip_file(tiny_clip_file):
    return tiny_clip_file


def step_losses(run_dir):
    records = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["event"] == "step"]


def train(*argv):
    assert main(["train", *map(str, argv), "--no-progress"]) == 0


def same_state_after_resume(tmp_path, *, steps: int) -> dict:
    """The "full" run's saved state, after checking the resumed "cut" run ended on the same one."""
    full = torch.load(tmp_path / "full" / STATE_FILE, weights_only=True)
    cut = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)
    assert cut["step"] == full["step"] == steps
    for key, value in full["model"].items():
        assert torch.allclose(cut["model"][key], value, atol=1e-6), key
    return full


def first_vs_last(losses, n=3):
    values = [loss for _, loss in losses]
    return sum(values[:n]) / n, sum(values[-n:]) / n


def test_clip_pretrain_loss_goes_down(world, tmp_path):
    train("clip-pretrain", "--data", world / "fashioniq", world / "cirr", "--out", tmp_path, "--epochs", "12",
          "--batch-size", "32", "--lr", "2e-3")
    first, last = first_vs_last(step_losses(tmp_path))
    assert last < first - 0.2
    assert load_checkpoint(tmp_path / "best.safetensors").config["provenance"]["stage"] == "clip-pretrain"


def test_stage1_text_encoder_loss_goes_down_and_image_tower_is_untouched(world, clip_file, tmp_path):
    train("stage1", "--data", world / "fashioniq", "--clip", clip_file, "--out", tmp_path, "--epochs", "8",
          "--batch-size", "16", "--lr", "3e-4")
    first, last = first_vs_last(step_losses(tmp_path))
    assert last < first
    tuned, original = load_checkpoint(tmp_path / "best.safetensors").clip, load_checkpoint(clip_file).clip
    assert tuned.fingerprint() == original.fingerprint()  # image tower frozen: indexes stay valid
    assert not torch.equal(tuned.model.token_embedding.weight, original.model.token_embedding.weight) or \
        any(not torch.equal(a, b) for a, b in zip(tuned.model.transformer.parameters(),
                                                  original.model.transformer.parameters()))


def test_stage1_both_encoders_runs(world, clip_file, tmp_path):
    train("stage1", "--data", world / "cirr", "--clip", clip_file, "--out", tmp_path, "--epochs", "1",
          "--batch-size", "4", "--lr", "1e-4", "--encoder", "both", "--max-steps", "2")
    assert [s for s, _ in step_losses(tmp_path)] == [1, 2]


def test_stage2_loss_goes_down_and_saves_a_combiner(world, clip_file, tmp_path):
    train("stage2", "--data", world / "fashioniq", "--clip", clip_file, "--out", tmp_path, "--epochs", "15",
          "--batch-size", "16", "--lr", "1e-3")
    first, last = first_vs_last(step_losses(tmp_path))
    assert last < first - 0.2
    ckpt = load_checkpoint(tmp_path / "best.safetensors")
    assert ckpt.combiner.dims() == {"clip_feature_dim": 96, "projection_dim": 384, "hidden_dim": 768}
    assert ckpt.config["provenance"]["stage"] == 2


def test_resume_continues_from_the_saved_step_exactly(world, clip_file, tmp_path):
    common = ["stage2", "--data", world / "fashioniq", "--clip", clip_file, "--epochs", "3", "--batch-size", "8",
              "--lr", "1e-3", "--seed", "5"]
    train(*common, "--out", tmp_path / "full", "--max-steps", "9")
    train(*common, "--out", tmp_path / "cut", "--max-steps", "4")
    assert torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)["step"] == 4
    train(*common, "--out", tmp_path / "cut", "--max-steps", "9", "--resume")
    assert [s for s, _ in step_losses(tmp_path / "cut")] == list(range(1, 10))
    full = torch.load(tmp_path / "full" / STATE_FILE, weights_only=True)
    cut = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)
    assert cut["step"] == full["step"] == 9
    for key, value in full["model"].items():
        assert torch.allclose(cut["model"][key], value, atol=1e-6), key
    cut_losses = [loss for _, loss in step_losses(tmp_path / "cut")]
    assert cut_losses == pytest.approx([loss for _, loss in step_losses(tmp_path / "full")], abs=1e-5)


def test_a_fresh_run_refuses_a_folder_holding_a_run_unless_overwrite(world, clip_file, tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "best.safetensors").write_text("the previous run's weights")
    argv = ["stage2", "--data", world / "fashioniq", "--categories", "dress", "--clip", clip_file, "--out", tmp_path,
            "--batch-size", "4", "--max-steps", "1"]
    assert main(["train", *map(str, argv), "--no-progress"]) == 2
    message = capsys.readouterr().err
    assert "already holds a training run" in message and "--resume" in message and "--overwrite" in message
    assert main(["train", *map(str, argv), "--no-progress", "--resume"]) == 2  # a run, but no state.pt
    assert "no state.pt to resume from" in capsys.readouterr().err
    assert (tmp_path / "best.safetensors").read_text() == "the previous run's weights"  # untouched
    with pytest.raises(SystemExit):
        main(["train", *map(str, argv), "--resume", "--overwrite"])
    train(*argv, "--overwrite")
    assert not (tmp_path / "best.safetensors").exists()  # one step, no validation: nothing of the old run left
    assert [s for s, _ in step_losses(tmp_path)] == [1]


def test_cached_features_equal_re_encoding_every_batch(world, clip_file):
    """The deviation from the original (cache once, not re-encode per batch) changes no number."""
    from cir_demo.pipeline.encode import open_image
    from cir_demo.train.data import cache_triplet_features, load_train_triplets

    clip = load_clip("x", str(clip_file))
    data = load_train_triplets(world / "fashioniq")
    cache = cache_triplet_features(clip, data, progress=False)
    rows = [0, 5, 9]
    with torch.no_grad():
        for r in rows:
            t = data.triplets[r]
            pixels = torch.stack([clip.preprocess(open_image(data.path_of[n])) for n in (t.reference, t.target)])
            ref, target = clip.encode_image(pixels)
            assert torch.allclose(cache.ref[r], ref, atol=1e-5) and torch.allclose(cache.target[r], target, atol=1e-5)
            for v, caption in enumerate(data.captions[r]):
                assert torch.allclose(cache.text[r, v], clip.encode_text([caption])[0], atol=1e-5)
    assert cache.text.shape[1] == 4 and (cache.n_variants == 4).all()


def test_epoch_batches_shard_one_permutation():
    single = epoch_batches(10, 4, seed=1, epoch=0, rank=0, world=1, drop_last=True)
    r0 = epoch_batches(10, 4, seed=1, epoch=0, rank=0, world=2, drop_last=True)
    r1 = epoch_batches(10, 4, seed=1, epoch=0, rank=1, world=2, drop_last=True)
    assert len(single) == 2 and all(len(b) == 4 for b in single)
    for whole, a, b in zip(single, r0, r1):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(whole.tolist())
    assert epoch_batches(10, 4, seed=1, epoch=1, rank=0, world=1, drop_last=True)[0].tolist() != single[0].tolist()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes
def test_two_process_gloo_ddp_gives_identical_parameters(world, clip_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "cir_demo", "train", "stage2", "--data", str(world / "fashioniq"), "--clip", str(clip_file),
           "--out", str(tmp_path), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu",
           "--no-progress"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    checksums = [r["checksums"] for r in records if r["event"] == "ddp"]
    assert len(checksums) == 1 and len(checksums[0]) == 2
    assert checksums[0][0] == checksums[0][1]
    assert any(r["event"] == "step" for r in records)


def test_resume_when_max_steps_lands_on_an_epoch_end(world, clip_file, tmp_path):
    # 48 triplets / batch 8 = 6 batches per epoch: stop exactly at the end of epoch 1
    common = ["stage2", "--data", world / "fashioniq", "--clip", clip_file, "--epochs", "2", "--batch-size", "8",
              "--lr", "1e-3", "--seed", "2"]
    train(*common, "--out", tmp_path / "full")
    train(*common, "--out", tmp_path / "cut", "--max-steps", "6")
    state = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == (1, 6, 0)
    assert (tmp_path / "cut" / "best.safetensors").is_file()  # the finished epoch was validated
    train(*common, "--out", tmp_path / "cut", "--resume")
    full = same_state_after_resume(tmp_path, steps=12)
    assert_refused(["train", *map(str, common[:-2]), "--seed", "3", "--out", str(tmp_path / "cut"), "--resume",
                    "--epochs", "3", "--no-progress"], "cannot resume")


def assert_refused(argv, match):
    """The command refuses with a message naming ``match``: exit status 2 (the CLI reports a
    ValueError raised by this package as bad input) or, from an older CLI, the ValueError."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(argv)
    except ValueError as raised:
        assert match in str(raised)
        return
    assert code == 2 and match in err.getvalue()


def test_sample_variants_is_uniform_and_deterministic():
    from cir_demo.train.data import sample_variants

    n_var = torch.tensor([4] * 1000 + [1] * 10)
    picks = torch.cat([sample_variants(n_var, seed=0, step=s) for s in range(20)]).view(20, -1)
    four = picks[:, :1000].flatten()
    counts = torch.bincount(four, minlength=4).float() / four.numel()
    assert counts.max() - counts.min() < 0.02 and four.max() == 3
    assert (picks[:, 1000:] == 0).all()
    assert torch.equal(sample_variants(n_var, 0, 5), sample_variants(n_var, 0, 5))


def test_stage1_loss_is_the_papers_and_clip_stays_in_eval_mode(world, clip_file):
    import torch.nn.functional as F

    from cir_demo.train.data import load_train_triplets, sample_variants
    from cir_demo.train.stage1 import Stage1Task, freeze_for

    clip = load_clip("x", str(clip_file))
    freeze_for(clip, "text")
    data = load_train_triplets(world / "fashioniq")
    task = Stage1Task(clip, data, "text", root=world / "fashioniq", categories=None, seed=0, device="cpu",
                      provenance={}, progress=False)
    clip.model.train()
    task.train_mode()
    assert not any(m.training for m in clip.model.modules())  # BatchNorm statistics would stay frozen
    rows = torch.tensor([0, 3, 7, 11])
    loss = task.loss(rows, step=2)
    variant = sample_variants(task.n_variants, 0, 2, rows)
    with torch.no_grad():
        captions = [data.captions[r][v] for r, v in zip(rows.tolist(), variant.tolist())]
        ref = torch.stack([task.image_cache[data.triplets[r].reference] for r in rows.tolist()])
        tgt = torch.stack([task.image_cache[data.triplets[r].target] for r in rows.tolist()])
        logits = 100 * F.normalize(ref + clip.encode_text(captions), dim=-1) @ F.normalize(tgt, dim=-1).T
        expected = F.cross_entropy(logits, torch.arange(4))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert not next(clip.model.visual.parameters()).requires_grad


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path), "--clip", str(tmp_path / "none.safetensors")]) == 2
    assert "error:" in capsys.readouterr().err


def test_cosine_schedule_warms_up_then_decays_to_zero():
    import math

    from cir_demo.train.loop import lr_factor

    total = 200  # 3 % warm-up: 6 steps
    factors = [lr_factor("cosine", s, total) for s in range(total)]
    assert factors[:6] == pytest.approx([(s + 1) / 6 for s in range(6)])
    assert factors[6] == pytest.approx(1.0) and factors[-1] < 1e-3
    assert factors[103] == pytest.approx(0.5 * (1 + math.cos(math.pi * 97 / 194)))
    assert all(a >= b for a, b in zip(factors[6:], factors[7:]))  # never rises after the warm-up
    assert lr_factor("constant", 50, total) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("step", 0, total)


def test_a_cosine_run_resumes_exactly_and_ends_near_zero(world, clip_file, tmp_path):
    common = ["stage2", "--data", world / "fashioniq", "--clip", clip_file, "--epochs", "2", "--batch-size", "8",
              "--lr", "1e-3", "--seed", "4", "--schedule", "cosine"]
    train(*common, "--out", tmp_path / "full")
    train(*common, "--out", tmp_path / "cut", "--max-steps", "5")
    train(*common, "--out", tmp_path / "cut", "--resume")
    full = same_state_after_resume(tmp_path, steps=12)
    group = full["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == pytest.approx(1e-3) and group["lr"] < 0.05 * 1e-3  # the last step's rate


def test_group_batches_keep_each_group_together(world):
    from cir_demo.train.groups import group_order, image_groups
    from cir_demo.train.pretrain import captioned_images

    paths, _ = captioned_images([world / "fashioniq", world / "cirr"], "train")
    groups = image_groups([world / "fashioniq", world / "cirr"], "train", paths)
    assert sorted(r for g in groups for r in g) == list(range(len(paths)))  # a partition of the images
    from cir_demo.data.datasets import load_cirr

    row = {str(p): i for i, p in enumerate(paths)}
    cirr = load_cirr(world / "cirr", "train")
    group_of = {r: k for k, g in enumerate(groups) for r in g}
    for t in cirr.triplets:  # an image set is never split, and reference and target share a group
        assert len({group_of[row[str(cirr.image_path(n))]] for n in t.group}) == 1
    order = group_order(groups, seed=0, epoch=3).tolist()
    assert sorted(order) == list(range(len(paths)))
    positions = {r: i for i, r in enumerate(order)}
    for g in groups:  # contiguous in the epoch's order
        spots = sorted(positions[r] for r in g)
        assert spots[-1] - spots[0] == len(g) - 1
    assert order != group_order(groups, seed=0, epoch=4).tolist()


def test_triplet_groups_link_triplets_that_share_an_image(world):
    from cir_demo.train.data import load_train_triplets
    from cir_demo.train.groups import triplet_groups

    data = load_train_triplets(world / "cirr")
    groups = triplet_groups(data.triplets)
    assert sorted(r for g in groups for r in g) == list(range(len(data.triplets)))
    group_of = {r: k for k, g in enumerate(groups) for r in g}
    for a, ta in enumerate(data.triplets):  # an independent check: sharing an image set means sharing a group
        for b, tb in enumerate(data.triplets):
            if set(ta.group) & set(tb.group):
                assert group_of[a] == group_of[b]
    assert len(groups) == len({t.group for t in data.triplets})  # CIRR: one group per image set


def test_stage2_reference_negative_scores_each_query_against_its_own_reference(world, clip_file):
    import torch.nn.functional as F

    from cir_demo.model.combiner import Combiner
    from cir_demo.train.data import cache_triplet_features, load_train_triplets, sample_variants
    from cir_demo.train.stage2 import Stage2Task

    clip = load_clip("x", str(clip_file))
    cache = cache_triplet_features(clip, load_train_triplets(world / "fashioniq"), progress=False)
    combiner = Combiner(96, 384, 768).eval()  # no dropout: the two computations must match exactly
    task = Stage2Task(clip, combiner, cache, [], seed=0, device="cpu", provenance={}, reference_negative=True)
    rows = torch.tensor([1, 4, 6])
    variant = sample_variants(cache.n_variants, 0, 3, rows)
    query = combiner.combine_features(cache.ref[rows], cache.text[rows, variant])  # (3, D)
    candidates = F.normalize(torch.cat([cache.target[rows], cache.ref[rows]]), dim=-1)  # targets, then references
    expected = F.cross_entropy(100 * query @ candidates.T, torch.arange(3))
    assert float(task.loss(rows, step=3).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    task.reference_negative = False
    plain = F.cross_entropy(100 * query @ candidates[:3].T, torch.arange(3))
    assert float(task.loss(rows, step=3).detach()) == pytest.approx(float(plain.detach()), rel=1e-5)


def test_stage2_set_negatives_score_each_query_against_its_own_image_set(world, clip_file):
    """Written out per row: the cross-entropy over the batch's targets and the row's own image set
    (reference included, target left out), no other row's set."""
    import torch.nn.functional as F
    from PIL import Image

    from cir_demo.model.combiner import Combiner
    from cir_demo.train.data import cache_triplet_features, load_train_triplets, sample_variants, set_members
    from cir_demo.train.stage2 import Stage2Task

    clip = load_clip("x", str(clip_file))
    data = load_train_triplets(world / "cirr")
    cache = cache_triplet_features(clip, data, progress=False, with_members=True)
    combiner = Combiner(96, 384, 768).eval()
    task = Stage2Task(clip, combiner, cache, [], seed=0, device="cpu", provenance={})
    rows = torch.tensor([0, 3, 7, 11])
    variant = sample_variants(cache.n_variants, 0, 2, rows)
    query = combiner.combine_features(cache.ref[rows], cache.text[rows, variant])  # (4, D)
    with torch.no_grad():  # the members encoded afresh, one by one, from their files
        fresh = {n: clip.encode_image(clip.preprocess(Image.open(data.path_of[n]).convert("RGB"))[None])[0]
                 for r in rows.tolist() for n in set_members(data.triplets[r])}
    losses = []
    for i, r in enumerate(rows.tolist()):
        t = data.triplets[r]
        own = set_members(t)
        assert t.reference in own and t.target not in own and len(own) == len(t.group) - 1
        candidates = F.normalize(torch.cat([cache.target[rows], torch.stack([fresh[n] for n in own])]), dim=-1)
        losses.append(F.cross_entropy(100 * query[i:i + 1] @ candidates.T, torch.tensor([i])))
    expected = torch.stack(losses).mean()
    with torch.no_grad():
        assert float(task.loss(rows, step=2)) == pytest.approx(float(expected), rel=1e-4)
    cache.members = None  # without sets: the paper's loss over the batch's targets only
    plain = F.cross_entropy(100 * query @ F.normalize(cache.target[rows], dim=-1).T, torch.arange(4))
    with torch.no_grad():
        assert float(task.loss(rows, step=2)) == pytest.approx(float(plain), rel=1e-4)
    with pytest.raises(ValueError, match="image sets"):
        cache_triplet_features(clip, load_train_triplets(world / "fashioniq"), progress=False, with_members=True)


def test_stage1_set_negatives_add_each_querys_own_image_set(world, clip_file):
    import torch.nn.functional as F

    from cir_demo.train.data import load_train_triplets, sample_variants, set_members
    from cir_demo.train.stage1 import Stage1Task

    clip = load_clip("x", str(clip_file))
    data = load_train_triplets(world / "cirr")
    task = Stage1Task(clip, data, "text", root=world / "cirr", categories=None, seed=0, device="cpu",
                      provenance={}, progress=False, set_negatives=True)
    rows = torch.tensor([1, 2, 8])
    with torch.no_grad():
        tokens = task.tokens[rows, sample_variants(task.n_variants, 0, 5, rows)]
        text = clip.model.encode_text(tokens)
        feats = task.image_cache
        losses = []
        for i, r in enumerate(rows.tolist()):  # written out per row: sum query against targets, then own set
            t = data.triplets[r]
            query = F.normalize(feats[t.reference] + text[i], dim=-1)
            candidates = [feats[data.triplets[k].target] for k in rows.tolist()] + [feats[n] for n in set_members(t)]
            logits = 100 * F.normalize(torch.stack(candidates), dim=-1) @ query
            losses.append(F.cross_entropy(logits[None], torch.tensor([i])))
        assert float(task.loss(rows, step=5)) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-4)
    with pytest.raises(ValueError, match="encoder text"):
        Stage1Task(clip, data, "both", root=world / "cirr", categories=None, seed=0, device="cpu", provenance={},
                   progress=False, set_negatives=True)


def test_the_library_takes_a_typed_config_and_trains_as_the_cli_does(world, clip_file, tmp_path):
    """run(Stage2Config(...)) from Python gives the same weights, byte for byte, as the command line,
    and the command line's defaults are the config's."""
    import argparse

    from cir_demo.commands.train import add_arguments, config_of
    from cir_demo.train.stages import Stage2Config, run

    common = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--seed", "3"]
    train("stage2", "--data", world / "fashioniq", "--clip", clip_file, "--out", tmp_path / "cli", *common)
    run(Stage2Config(data=world / "fashioniq", clip=clip_file, out=tmp_path / "lib", epochs=2, batch_size=8,
                     lr=1e-3, seed=3, progress=False))
    cli, lib = (load_checkpoint(tmp_path / d / "best.safetensors").combiner.state_dict() for d in ("cli", "lib"))
    assert cli.keys() == lib.keys() and all(torch.equal(cli[k], lib[k]) for k in cli)

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = config_of(parser.parse_args(["stage2", "--data", "d", "--out", "o", "--clip", "c", "--device", "cpu"]))
    assert parsed == Stage2Config(data="d", out="o", clip="c", device="cpu")
    assert (parsed.epochs, parsed.batch_size, parsed.lr) == (300, 4096, 2e-5)  # the paper's stage 2


@pytest.mark.parametrize("bad, message", [({"schedule": "linear"}, "schedule"), ({"epochs": 0}, "epochs"),
                                          ({"resume": True, "overwrite": True}, "exclude")])
def test_a_stage_config_refuses_what_no_run_can_use(bad, message):
    from cir_demo.train.stages import Stage1Config

    with pytest.raises(ValueError, match=message):
        Stage1Config(data="d", out="o", clip="c", **bad)
    with pytest.raises(ValueError, match="encoder"):
        Stage1Config(data="d", out="o", clip="c", encoder="vision")
