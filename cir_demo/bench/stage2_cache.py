"""Stage-2 epoch time: features cached once (ours) vs re-encoding every batch (the original).

Same data, same CLIP, same Combiner, same batches, in one run. Prints JSON lines.

    .venv/bin/python -m cir_demo.bench.stage2_cache --data data/world/fashioniq --clip weights/fashioniq.safetensors
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cir_demo.model import Combiner, load_clip
from cir_demo.pipeline.encode import open_image
from cir_demo.train.data import cache_triplet_features, load_train_triplets, sample_variants
from cir_demo.train.loop import epoch_batches


class TripletImages(Dataset):
    """What the original's loader yields per triplet: two decoded, preprocessed images and a caption."""

    def __init__(self, data, rows, preprocess):
        self.data, self.rows, self.preprocess = data, rows, preprocess

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        t = self.data.triplets[self.rows[i]]
        return (self.preprocess(open_image(self.data.path_of[t.reference])),
                self.preprocess(open_image(self.data.path_of[t.target])), self.rows[i])


def step(combiner, optimizer, ref, text, target):
    optimizer.zero_grad(set_to_none=True)
    logits = combiner(ref, text, target)
    loss = F.cross_entropy(logits, torch.arange(len(logits)))
    loss.backward()
    optimizer.step()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--clip-model", default="RN50x4")
    parser.add_argument("--triplets", type=int, default=2048, help="epoch size (a prefix of the train split)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    clip = load_clip(args.clip_model, args.clip)
    data = load_train_triplets(args.data)
    data.triplets, data.captions = data.triplets[:args.triplets], data.captions[:args.triplets]
    n = len(data.triplets)
    batches = epoch_batches(n, args.batch_size, seed=0, epoch=0, rank=0, world=1, drop_last=True)
    dim = clip.feature_dim
    n_var = torch.tensor([len(c) for c in data.captions])

    torch.manual_seed(0)
    combiner = Combiner.for_feature_dim(dim).train()
    optimizer = torch.optim.Adam(combiner.parameters(), lr=2e-5)
    start = time.perf_counter()
    cache = cache_triplet_features(clip, data, num_workers=args.num_workers, progress=False)
    cache_s = time.perf_counter() - start
    start = time.perf_counter()
    for i, rows in enumerate(batches):
        v = sample_variants(cache.n_variants[rows], 0, i)
        step(combiner, optimizer, cache.ref[rows], cache.text[rows, v], cache.target[rows])
    cached_epoch_s = time.perf_counter() - start

    torch.manual_seed(0)
    combiner = Combiner.for_feature_dim(dim).train()
    optimizer = torch.optim.Adam(combiner.parameters(), lr=2e-5)
    order = torch.cat(batches).tolist()
    loader = DataLoader(TripletImages(data, order, clip.preprocess), batch_size=args.batch_size,
                        num_workers=args.num_workers)
    start = time.perf_counter()
    for i, (ref_px, tgt_px, rows) in enumerate(loader):
        v = sample_variants(n_var[rows], 0, i)
        captions = [data.captions[r][int(j)] for r, j in zip(rows.tolist(), v)]
        with torch.no_grad():
            ref, target = clip.encode_image(ref_px), clip.encode_image(tgt_px)
            text = clip.encode_text(captions)
        step(combiner, optimizer, ref, text, target)
    reencode_epoch_s = time.perf_counter() - start
    print(json.dumps({"measure": "stage2_epoch", "model": clip.name, "triplets": n, "batch_size": args.batch_size,
                      "batches": len(batches), "cache_build_s": round(cache_s, 3),
                      "cached_epoch_s": round(cached_epoch_s, 3), "reencode_epoch_s": round(reencode_epoch_s, 3),
                      "speedup_per_epoch": round(reencode_epoch_s / cached_epoch_s, 1),
                      "device": "cpu", "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
