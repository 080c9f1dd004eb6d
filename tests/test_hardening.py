"""Issue 10, the library half: bounded preprocessing, only documented errors, checkpoint details,
dataset paths and index / submission artifacts that survive kills.

The thin-image and kill tests run in subprocesses: one measures peak RSS (with an address-space
limit, so a regression fails with MemoryError instead of taking the machine down), the other
kills a save with ``os._exit`` after each file-system step, as ``kill -9`` would.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from cir_demo.cli import is_user_error, main, one_line
from cir_demo.data import transforms
from cir_demo.data.datasets import DatasetError, load_cirr, load_fashioniq, open_dataset
from cir_demo.data.transforms import ImageReadError, ImageShapeError, Preprocess, geometry
from cir_demo.data.validate import validate_layout
from cir_demo.index import store
from cir_demo.index.store import IndexDataError, IndexFormatError, check_names, load_index, save_index
from cir_demo.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cir_demo.model.combiner import Combiner

PROJECT = Path(__file__).resolve().parent.parent
MANIFEST = {"model_fingerprint": "fp-test", "model_name": "test"}


def _child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(PROJECT), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
    return env


# ---- 1. preprocessing: bounded by the output, same pixels as before -----------------------------
def _padded_route(image: Image.Image, mode: str, size: int, ratio: float = 1.25) -> torch.Tensor:
    """The pipeline as it was before the fix: pad the whole canvas, resize, centre-crop."""
    image = transforms.to_rgb(image)
    w, h = image.size
    if mode != "clip":
        side = max(w, h) / ratio if mode == "targetpad" else max(w, h)
        if mode == "squarepad" or max(w, h) / min(w, h) >= ratio:
            left, top = max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)
            canvas = Image.new("RGB", (w + 2 * left, h + 2 * top))  # black
            canvas.paste(image, (left, top))
            image = canvas
    image = TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC)
    image = TF.center_crop(image, size)
    return TF.normalize(TF.to_tensor(image), transforms.CLIP_MEAN, transforms.CLIP_STD)


ORDINARY = [(400, 500), (500, 300), (640, 100), (100, 640), (37, 101), (101, 37), (333, 777), (1, 3), (3, 1),
            (1, 1), (250, 200), (200, 250), (13, 1000), (1000, 13), (1200, 901), (57, 999), (224, 224)]


@pytest.mark.parametrize("mode", ["targetpad", "squarepad", "clip"])
def test_ordinary_images_take_the_papers_route_bit_for_bit(mode):
    rng = np.random.default_rng(7)
    for (w, h), size in [(s, 224) for s in ORDINARY] + [(s, 64) for s in ORDINARY[:8]]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(Preprocess(mode, size)(image), _padded_route(image, mode, size)), (w, h, size)


def _photo_like(w: int, h: int) -> Image.Image:
    """Smooth colour fields with a few edges, as photos have (not noise, which no resize keeps)."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    rgb = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(4 * x * y + 1)], -1) * 0.5 + 0.5
    rgb[(x - 0.3) ** 2 + (y - 0.4) ** 2 < 0.02] = (0.9, 0.1, 0.1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["targetpad", "squarepad", "clip"])
def test_images_far_from_photos_are_shrunk_first_and_stay_close(mode, monkeypatch):
    """Past the limits the canvas is never built: the image is reduced (or cut to what reaches the
    crop) first. Forced on images where the full route can still be computed, the crops agree
    to within a few levels of 255, but for the edge of the padding, which can move by a pixel."""
    for w, h in [(1200, 901), (901, 1200), (640, 100), (2000, 40), (40, 2000), (3000, 150)]:
        image = _photo_like(w, h)
        expected = _padded_route(image, mode, 224)
        geo = geometry(w, h, mode, 224)
        monkeypatch.setattr(transforms, "DIRECT_MAX_CANVAS", max(1, geo.padded_pixels // 5))
        monkeypatch.setattr(transforms, "DIRECT_MAX_RESIZED", max(1, geo.resized_pixels // 5))
        got = Preprocess(mode, 224)(image)
        monkeypatch.undo()
        levels = ((got - expected).abs() * torch.tensor(transforms.CLIP_STD)[:, None, None] * 255)
        assert got.shape == (3, 224, 224) and levels.mean() < 3 and levels.quantile(0.98) < 20, (w, h, mode)


def test_geometry_matches_the_padding_the_paper_uses():
    geo = geometry(101, 37, "targetpad", 64)  # s = 80.8 -> 21 rows top and bottom (hand-computed)
    assert (geo.left, geo.top, geo.padded_w, geo.padded_h) == (0, 21, 101, 79)
    assert (geo.resized_w, geo.resized_h, geo.crop_left, geo.crop_top) == (81, 64, 8, 0)
    thin = geometry(1, 1000, "targetpad", 224)  # 800 x 1000 canvas that is never built
    assert (thin.padded_w, thin.padded_h, thin.resized_w, thin.resized_h) == (799, 1000, 224, 280)


THIN_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from PIL import Image
    from cir_demo.data.transforms import ImageShapeError, Preprocess
    from cir_demo.pipeline.encode import ImageReadError, open_image

    folder = sys.argv[1]
    Preprocess("targetpad", 224)(Image.new("RGB", (640, 480), (9, 9, 9)))  # warm up: threads, allocator
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + (1536 << 20) if hard == resource.RLIM_INFINITY else min(vm + (1536 << 20), hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))  # an unbounded canvas -> MemoryError, not OOM
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, results = time.time(), {}
    for w, h in ((1, 100000), (100000, 1), (40, 40000), (40000, 40), (5, 5000)):
        path = f"{folder}/{w}x{h}.png"
        Image.new("RGB", (w, h), (200, 30, 60)).save(path)
        for mode in ("targetpad", "squarepad", "clip"):
            try:
                out = Preprocess(mode, 224)(open_image(path))
                results[f"{w}x{h} {mode}"] = list(out.shape)
            except ImageReadError as err:
                results[f"{w}x{h} {mode}"] = type(err).__name__ + ": " + str(err)
        try:
            Preprocess("targetpad", 224)(Image.new("RGB", (w, h)))  # in memory, no header check
        except ImageShapeError as err:
            results[f"{w}x{h} in memory"] = type(err).__name__
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"peak_mb": peak, "baseline_mb": base / 1024, "seconds": time.time() - start,
                      "results": results}))
""")


def test_thin_images_cost_what_a_photo_costs(tmp_path):
    """1 x 100,000 (a 471-byte PNG) used to be padded to 80,000 x 100,000 (~24 GB): now it is refused
    from its header, and aspect-1000 strips (40 x 40,000: a 5 GB canvas before) are preprocessed
    without any canvas; peak RSS stays far below +300 MB."""
    run = subprocess.run([sys.executable, "-c", THIN_CHILD, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=_child_env(), cwd=PROJECT, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    results = report["results"]
    for key in ("1x100000", "100000x1"):
        for mode in ("targetpad", "squarepad", "clip"):
            assert results[f"{key} {mode}"].startswith("ImageShapeError: cannot use image"), results
            assert "aspect ratio above 1000:1" in results[f"{key} {mode}"]
        assert results[f"{key} in memory"] == "ImageShapeError"
    for key in ("40x40000", "40000x40", "5x5000"):
        for mode in ("targetpad", "squarepad", "clip"):
            assert results[f"{key} {mode}"] == [3, 224, 224], results
    print(f"peak RSS {report['peak_mb']:.1f} MB above a {report['baseline_mb']:.0f} MB baseline, "
          f"{report['seconds']:.1f} s")
    assert report["peak_mb"] < 300


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
@pytest.mark.parametrize("mode", ["targetpad", "squarepad", "clip"])
def test_images_without_pixels_are_refused(size, mode):
    with pytest.raises(ImageShapeError, match="no pixels"):  # was ZeroDivisionError
        Preprocess(mode, 32)(Image.new("RGB", size))


def test_one_pixel_image_is_an_image():
    image = Image.new("RGB", (1, 1), (10, 200, 30))
    for mode in ("targetpad", "squarepad", "clip"):
        assert torch.equal(Preprocess(mode, 32)(image), _padded_route(image, mode, 32))


# ---- 2. errors the front end expects -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip():
    from cir_demo.model import load_clip

    return load_clip("cir-tiny")


def test_dataloader_worker_failure_keeps_its_own_message(tmp_path, tiny_clip):
    from cir_demo.pipeline.encode import encode_image_files

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (20, 30), (1, 2, 3)).save(good)
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError) as err:
        encode_image_files(tiny_clip, [good, bad], batch_size=1, num_workers=1)
    message = str(err.value)
    assert "bad.png" in message and message.startswith("cannot read image")
    assert "DataLoader worker" not in message and "Traceback" not in message and "\n" not in message


def test_nan_weights_give_a_clear_error(tmp_path):
    from cir_demo.model import load_clip
    from cir_demo.pipeline.encode import EncodeError, encode_pil_images, encode_texts

    broken = load_clip("cir-tiny")
    with torch.no_grad():
        for p in broken.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(EncodeError, match="NaN or infinite features"):
        encode_pil_images(broken, [Image.new("RGB", (20, 30))])
    with pytest.raises(EncodeError):
        encode_texts(broken, ["a red dress"])
    # and a checkpoint holding NaN is refused when loaded, naming a tensor
    combiner = Combiner(4, 8, 8)
    with torch.no_grad():
        next(combiner.parameters()).view(-1)[0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.safetensors", combiner=combiner)
    with pytest.raises(CheckpointError, match=r"tensor '.*' holds 1 NaN / inf"):
        load_checkpoint(path)


def _index(folder: Path, rows: int = 5) -> Path:
    return save_index(folder, torch.randn(rows, 4), [f"n{i}" for i in range(rows)], MANIFEST)


@pytest.mark.parametrize("manifest", [[1, 2], "text", None, 3])
def test_non_dict_manifest_is_a_format_error(tmp_path, manifest):
    folder = _index(tmp_path / "idx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="rebuild it with"):  # was AttributeError for a list
        load_index(folder)


@pytest.mark.parametrize("names", [[["a"]], [{"a": 1}], None, 5, "ab", {"a": 1, "b": 2}, [1, 2], ["", "b"],
                                   ["a", "a"], ["a"]])
def test_bad_names_are_index_data_errors(names):
    with pytest.raises(IndexDataError):  # TypeError for None / 5 before; "ab" was accepted
        check_names(names, 2)


@pytest.mark.parametrize("features", [[[float("nan"), 1.0]], [[float("inf"), 1.0]], [[1e6, 1.0]], [["a", "b"]],
                                      [[1, 2], [3]], np.zeros((2, 0))])
def test_bad_features_are_index_data_errors(tmp_path, features):
    rows = len(features)
    with pytest.raises(IndexDataError):
        save_index(tmp_path / "idx", features, [f"n{i}" for i in range(rows)], MANIFEST)
    assert not (tmp_path / "idx").exists()


def test_stored_nan_features_are_refused_on_load(tmp_path):
    from safetensors.torch import save_file

    folder = _index(tmp_path / "idx")
    feats = torch.randn(5, 4).half()
    feats[2, 1] = float("nan")
    save_file({"features": feats}, str(folder / "features.safetensors"), metadata={"format": store.FORMAT})
    with pytest.raises(IndexFormatError, match="NaN"):
        load_index(folder)


# ---- 3. checkpoints ------------------------------------------------------------------------------
def test_fp16_save_keeps_out_of_range_tensors_in_fp32(tmp_path, caplog):
    from safetensors import safe_open

    combiner = Combiner(4, 8, 8)
    with torch.no_grad():
        big = next(combiner.parameters())
        big.view(-1)[0] = 1.0e6  # beyond fp16's 65504: would become inf
    big_key = "combiner." + next(n for n, _ in combiner.named_parameters())
    path = save_checkpoint(tmp_path / "c.safetensors", combiner=combiner, dtype=torch.float16)
    with safe_open(str(path), framework="pt") as handle:
        dtypes = {key: handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118
    assert dtypes.pop(big_key) == torch.float32
    assert set(dtypes.values()) == {torch.float16}  # the rest is still halved
    assert big_key in caplog.text
    loaded = load_checkpoint(path).combiner
    assert next(loaded.parameters()).view(-1)[0].item() == 1.0e6


class _Custom:
    pass


def test_pickle_refusal_says_why_without_unsafe_advice(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"epoch": 1, "Combiner": Combiner(4, 8, 8).state_dict(), "extra": _Custom()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "refused" in message and "arbitrary code" in message and "_Custom" in message
    assert "can still be loaded" not in message and "False" not in message and "\x1b" not in message
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(damaged)


# ---- 4. dataset paths ------------------------------------------------------------------------------
def _fashioniq(root: Path, names: list, captions=None) -> Path:
    (root / "images").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (4, 4)).save(root / "images" / f"{name}.jpg")
    Image.new("RGB", (4, 4)).save(root / "secret.jpg")  # outside images/
    (root / "image_splits").mkdir()
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(names))
    (root / "captions").mkdir()
    captions = captions or [{"candidate": "a", "target": "b", "captions": ["is red", "is long"]}]
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(captions))
    return root


@pytest.mark.parametrize("bad", ["../secret", "/{root}/secret", "sub/../../secret", "..\\secret"])
def test_fashioniq_names_cannot_leave_the_dataset(tmp_path, bad):
    root = tmp_path / "fiq"
    bad = bad.format(root=str(root).lstrip("/"))
    _fashioniq(root, ["a", "b", bad])
    with pytest.raises(DatasetError) as err:  # was indexed from outside images/
        load_fashioniq(root, "dress", "val")
    assert "split.dress.val.json: entry 2" in str(err.value) and repr(bad) in str(err.value)
    assert any("entry 2: bad image name" in p for p in validate_layout(root))


def test_fashioniq_caption_names_cannot_leave_the_dataset(tmp_path):
    root = _fashioniq(tmp_path / "fiq", ["a", "b"],
                      [{"candidate": "../secret", "target": "b", "captions": ["x", "y"]}])
    with pytest.raises(DatasetError, match=r"cap.dress.val.json: entry 0: candidate image '../secret'"):
        load_fashioniq(root, "dress", "val")


def test_cirr_paths_cannot_leave_the_dataset(tmp_path):
    root = tmp_path / "cirr"
    (root / "cirr" / "image_splits").mkdir(parents=True)
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits" / "split.rc2.val.json").write_text(json.dumps({"x": "./dev/..\\..\\x.png"}))
    with pytest.raises(DatasetError, match="bad relative path"):
        load_cirr(root, "val")


def test_undecodable_gallery_image_is_a_dataset_error(tmp_path):
    root = _fashioniq(tmp_path / "fiq", ["a", "b"])
    (root / "images" / "b.jpg").write_bytes(b"P6\n" + b"1" * 300 + b" 2\n255\n")  # Pillow: ValueError
    dataset = load_fashioniq(root, "dress", "val")
    assert dataset.open_image("a").size == (4, 4)
    with pytest.raises(DatasetError, match=r"b.jpg: cannot read image: .*Token too long"):
        dataset.open_image("b")


def test_unhashable_caption_entries_are_reported_not_raised(tmp_path):
    root = _fashioniq(tmp_path / "fiq", ["a", "b"], [{"candidate": ["a"], "target": "b", "captions": ["x", "y"]}])
    problems = validate_layout(root)  # was TypeError: unhashable type: 'list'
    assert any("cap.dress.val.json: entry 0: candidate image ['a']" in p for p in problems)


def test_unknown_category_split_and_missing_category_are_dataset_errors(tmp_path):
    root = _fashioniq(tmp_path / "fiq", ["a", "b"])
    with pytest.raises(DatasetError, match="unknown FashionIQ category 'shoes'"):
        load_fashioniq(root, "shoes", "val")
    with pytest.raises(DatasetError, match="unknown FashionIQ split"):
        load_fashioniq(root, "dress", ["val"])
    with pytest.raises(DatasetError, match="give a category"):
        open_dataset(root, "val")


# ---- 5. artifacts ------------------------------------------------------------------------------------
KILL_CHILD = textwrap.dedent("""
    import os, shutil, sys
    import torch
    from cir_demo.config import files
    from cir_demo.index import store

    out, kill_at, exchange = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    steps = [0]

    def step(fn):
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            steps[0] += 1
            if steps[0] == kill_at:
                os._exit(17)  # as kill -9 would: no cleanup, no finally
            return result
        return wrapped

    os.replace, os.rename, shutil.rmtree = step(os.replace), step(os.rename), step(shutil.rmtree)
    if hasattr(files, "exchange"):
        files.exchange = step(files.exchange) if exchange else (lambda a, b: False)
    store.save_index(out, torch.ones(6, 4), [f"new{i}" for i in range(6)], {"model_fingerprint": "fp"})
    print("completed after", steps[0], "steps")
""")


def _kill_run(out: Path, kill_at: int, exchange: bool) -> int:
    run = subprocess.run([sys.executable, "-c", KILL_CHILD, str(out), str(kill_at), "1" if exchange else "0"],
                         capture_output=True, text=True, timeout=120, env=_child_env(), cwd=PROJECT, check=False)
    assert run.returncode in (0, 17), run.stderr[-3000:]
    return run.returncode


def test_replacing_an_index_never_leaves_the_path_without_one(tmp_path):
    """Kill a replacing save after each of its file-system steps: the path always holds a complete
    index (the old one or the new one), and the next save removes what the killed one left."""
    out = tmp_path / "idx"
    codes, counts, litter = [], [], []
    for kill_at in range(1, 6):
        _index(out, 5)  # also removes what the previous killed run left
        codes.append(_kill_run(out, kill_at, exchange=True))
        index = load_index(out)  # was FileNotFoundError when killed between the two renames
        counts.append(index.count)
        litter += [p.name for p in tmp_path.iterdir() if p.name != "idx"]
        if codes[-1] == 0:
            break
    assert codes[0] == 17 and codes[-1] == 0  # killed at least once, then a run that completed
    assert set(counts) <= {5, 6} and counts[-1] == 6
    assert any(name.startswith(".idx.tmp-") for name in litter)  # a kill left the old index behind
    _index(out, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # ... and the next save removed it


def test_fallback_without_exchange_names_the_previous_index_and_cleans_up(tmp_path):
    out = tmp_path / "idx"
    _index(out, 5)
    assert _kill_run(out, 1, exchange=False) == 17  # killed between the two renames
    with pytest.raises(FileNotFoundError, match=r"interrupted save left the previous index at .*\.idx\.old-"):
        load_index(out)
    _index(out, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"] and load_index(out).count == 3


def test_symlinked_out_stays_a_symlink(tmp_path):
    target = _index(tmp_path / "real" / "idx", 5)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    save_index(link, torch.randn(7, 4), [f"m{i}" for i in range(7)], MANIFEST)
    assert link.is_symlink() and Path(os.readlink(link)) == target  # was replaced by a directory
    assert load_index(target).count == 7 and load_index(link).count == 7
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "elsewhere" / "idx")
    save_index(dangling, torch.randn(2, 4), ["a", "b"], MANIFEST)
    assert dangling.is_symlink() and load_index(tmp_path / "elsewhere" / "idx").count == 2


def test_litter_of_killed_runs_is_removed_but_not_a_running_save(tmp_path):
    out = _index(tmp_path / "idx", 5)
    dead = [tmp_path / ".idx.tmp-999999999-0a1b2c3d", tmp_path / ".idx.old-999999999-0a1b2c3d",
            tmp_path / ".idx.old-1a2b3c4d", tmp_path / ".idx.tmp-x8k2_q"]  # the last two: names of older versions
    for folder in dead:
        folder.mkdir()
        (folder / "features.safetensors").write_bytes(b"partial")
    running = tmp_path / f".idx.tmp-{os.getppid()}-feedbeef"  # a live process (pytest's parent)
    running.mkdir()
    other = tmp_path / ".other.tmp-999999999-0a1b2c3d"  # another index's: not ours to remove
    other.mkdir()
    save_index(out, torch.randn(3, 4), ["a", "b", "c"], MANIFEST)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["idx", running.name, other.name])


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_index_and_submission_permissions_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    from cir_demo.eval.submission import write_submission

    old = os.umask(umask)
    try:
        folder = _index(tmp_path / "idx", 5)
        files = write_submission(tmp_path / "sub", "sum", {"version": "rc2", "metric": "recall"},
                                 {"version": "rc2", "metric": "recall_subset"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == folder_mode  # mkdtemp made it 0700
    for name in ("features.safetensors", "names.json", "manifest.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == file_mode
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == file_mode


def test_submission_name_cannot_leave_its_folder(tmp_path):
    from cir_demo.eval.submission import SubmissionError, write_submission

    out = tmp_path / "a" / "sub"
    for name in ("/../../x", "../x", "a/b", "", None):
        with pytest.raises(SubmissionError):
            write_submission(out, name, {"version": "rc2", "metric": "recall"},
                             {"version": "rc2", "metric": "recall_subset"})
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


# ---- the command line: user errors are one line and exit 2 ------------------------------------------
def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    odd = tmp_path / "odd.pt"
    torch.save({"extra": _Custom()}, odd)
    bad_meta = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(bad_meta), metadata={"cir_demo": "[1, 2"})
    cases = [(["info", str(odd)], "refused to load"), (["info", str(bad_meta)], "not valid JSON"),
             (["info", str(tmp_path / "missing.safetensors")], "no such checkpoint file"),
             (["info", "no-such-open-clip-model"], "unknown open_clip model")]  # a plain ValueError of ours
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_cli_unwraps_dataloader_worker_errors(capsys, monkeypatch):
    from torch._utils import ExceptionWrapper

    try:
        raise ImageReadError("cannot read image /data/bad.png: image file is truncated")
    except ImageReadError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")  # what torch sends back
    with pytest.raises(ImageReadError) as err:
        wrapper.reraise()
    assert "Original Traceback" in str(err.value)
    assert one_line(err.value) == "cannot read image /data/bad.png: image file is truncated"
    from cir_demo.commands import info

    monkeypatch.setattr(info, "run", lambda args: wrapper.reraise())
    assert main(["info", "x"]) == 2
    assert capsys.readouterr().err == "error: cannot read image /data/bad.png: image file is truncated\n"


def test_only_our_own_value_errors_count_as_user_errors():
    from cir_demo.data.records import fashioniq_caption_variants

    try:
        fashioniq_caption_variants(["only one"])
    except ValueError as err:
        assert is_user_error(err)  # raised by a `raise` in cir_demo
    try:
        int("x")
    except ValueError as err:
        assert not is_user_error(err)  # raised outside the package: a bug, keeps its traceback
    try:
        np.zeros(3).reshape(2, 2)
    except ValueError as err:
        assert not is_user_error(err)
    assert is_user_error(PermissionError("no")) and is_user_error(IndexDataError("x"))
    assert not is_user_error(pickle.UnpicklingError("x")) and not is_user_error(KeyError("x"))
