"""Linear probes of frozen image features for the synthetic world's own attributes.

What can a Combiner compose if the image features do not hold it? For each attribute the
generator drew (a garment's colour, pattern, sleeves...; a scene's background and, per slot,
shape, colour, size and count), a multinomial logistic regression is fitted on the features of
the training split's images and scored on the validation split's. Its accuracy is printed next to
the majority baseline (always answering the training split's most common label): an attribute
probed near its majority is one the image tower does not see, and no caption can bring it back.

``python -m cir_demo probe --data WORLD/cirr --clip weights/cirr.safetensors``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from cir_demo.data.synth.attributes import labels, load_attributes
from cir_demo.eval.protocol import load_eval_splits
from cir_demo.model.clip import ClipModel
from cir_demo.pipeline.encode import encode_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    """One attribute's probe: held-out accuracy and the majority baseline, in percent."""
    attribute: str
    classes: int
    n_train: int
    n_test: int
    accuracy: float
    majority: float


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, weight_decay: float = 1e-3,
                     max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (W (D, C), b (C,)) on standardised ``x`` (N, D), labels ``y`` (N,),
    fitted with L-BFGS (full batch, deterministic). The mild L2 penalty keeps separable attributes
    from running the weights off to infinity (and the fit from taking minutes)."""
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    x = x.float()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_accuracy(train_x: torch.Tensor, train_y: Sequence[str], test_x: torch.Tensor,
                   test_y: Sequence[str]) -> tuple[float, float, int]:
    """(probe accuracy %, majority baseline %, number of classes) of one attribute.

    Features are standardised with the training rows' statistics; a test label never seen in
    training counts as an error (the probe cannot name it).
    """
    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    ytr = torch.tensor([index[v] for v in train_y])
    w, b = fit_linear_probe((train_x - mean) / std, ytr, len(classes))
    predicted = (((test_x - mean) / std).float() @ w + b).argmax(1).tolist()
    hits = sum(classes[p] == truth for p, truth in zip(predicted, test_y))
    common = Counter(train_y).most_common(1)[0][0]
    majority = sum(truth == common for truth in test_y)
    n = max(len(test_y), 1)
    return 100.0 * hits / n, 100.0 * majority / n, len(classes)


def probe_features(features: Mapping[str, torch.Tensor], attributes: Mapping[str, object],
                   train_names: Sequence[str], test_names: Sequence[str]) -> list[ProbeResult]:
    """Probe every attribute of :func:`~cir_demo.data.synth.attributes.labels` on ``features``
    ({name: (D,)}, normalised here as retrieval sees them); images where it does not apply are left out."""
    train_labels = [labels(attributes[n]) for n in train_names]
    test_labels = [labels(attributes[n]) for n in test_names]
    unit = {n: F.normalize(features[n].float(), dim=-1) for n in (*train_names, *test_names)}
    results = []
    for attribute in train_labels[0]:
        tr = [(n, lab[attribute]) for n, lab in zip(train_names, train_labels) if lab[attribute] is not None]
        te = [(n, lab[attribute]) for n, lab in zip(test_names, test_labels) if lab[attribute] is not None]
        if len({v for _, v in tr}) < 2 or not te:
            continue  # one class (e.g. a single category): nothing to probe
        accuracy, majority, classes = probe_accuracy(torch.stack([unit[n] for n, _ in tr]), [v for _, v in tr],
                                                     torch.stack([unit[n] for n, _ in te]), [v for _, v in te])
        results.append(ProbeResult(attribute, classes, len(tr), len(te), accuracy, majority))
    return results


def probe_world(clip: ClipModel, root: str | Path, *, categories: Optional[Sequence[str]] = None,
                test_split: str = "val", batch_size: int = 64, num_workers: int = 0,
                progress: bool = False) -> list[ProbeResult]:
    """Encode a synthetic dataset's training and ``test_split`` images with ``clip`` and probe them."""
    attributes = load_attributes(root)
    if not attributes:
        raise ValueError(f"{root}: no attributes.json; the probe needs a world made by `python -m cir_demo synth`")
    names, paths = {}, {}
    for split in ("train", test_split):
        names[split] = []
        for ds in load_eval_splits(root, split, categories):
            names[split] += ds.image_names
            paths.update((n, ds.image_path(n)) for n in ds.image_names)
    features = encode_names(clip, list(paths), paths.__getitem__, batch_size=batch_size, num_workers=num_workers,
                            progress=progress, desc="probe images")
    return probe_features(features, attributes, names["train"], names[test_split])


def format_probe(results: Sequence[ProbeResult]) -> str:
    """A Markdown table: attribute, classes, probe accuracy, majority baseline, and the gain."""
    lines = ["| attribute | classes | probe % | majority % | gain |", "|---|---|---|---|---|"]
    lines += [f"| {r.attribute} | {r.classes} | {r.accuracy:.1f} | {r.majority:.1f} | {r.accuracy - r.majority:+.1f} |"
              for r in results]
    return "\n".join(lines)
