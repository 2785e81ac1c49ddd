"""Would picture addresses from each image location bind better than from the whole frame?

A label-only probe (no training): the Hebbian ceiling of the word-referent suite
(:func:`launch.evals.word_referent_addresses.hebbian_ceiling`) with perfect word
addresses and picture addresses hashed (random hyperplanes, N = 4096 nodes) from
an *untrained* video encoder's feature map, either pooled over the whole frame
(as the model's address is) or per location of its 4×4 map (DenseAV-style: an
object's location might address the same nodes whatever the background).
Features are centred per recording. Two encoder seeds, two hash seeds each. First,
the ceiling with perfect addresses for both at several binding windows (``lag``).

Usage::

    python scripts/address_features_ceiling.py HELDOUT_SHARDS [IMAGE_SIZE]
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch

from launch.evals.word_referent import WordReferentConfig
from launch.evals.word_referent_addresses import hebbian_ceiling
from launch.evals.word_referent_data import collect, count_recordings, usable
from launch.evals.word_referent_trials import build_trials
from launch.runner import resolve_config
from obs_dist.model.av_encoders import VideoClipEncoder

NODES, BITS = 4096, 9


def lsh(x: torch.Tensor, tables: int, bits: int, seed: int) -> torch.Tensor:
    """``[n, c]`` → ``[n, tables]`` node ids (table ``t`` owns nodes ``t·2^bits …``)."""
    planes = torch.randn(tables, bits, x.shape[1], generator=torch.Generator().manual_seed(seed))
    code = (torch.einsum("nc,tbc->ntb", x, planes) > 0).long()
    return (code * 2 ** torch.arange(bits)).sum(-1) + torch.arange(tables) * 2 ** bits


def main() -> None:
    torch.set_num_threads(1)
    source = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    cfg = WordReferentConfig()
    run_cfg = resolve_config(cfg.config, [f"data.image_size={size}", f"model.image_size={size}"])
    labels, media = collect(run_cfg, source, count_recordings(run_cfg, source))
    trials = usable(build_trials(labels, cfg.candidates, cfg.min_occurrences, cfg.min_purity,
                                 cfg.min_gap, cfg.trial_seed), media)
    learner = SimpleNamespace(writer=True, num_nodes=NODES,
                              config=SimpleNamespace(writer=SimpleNamespace(k_max=8)))
    keys = sorted(media)
    recs = sorted({k[0] for k in keys})
    rec_of = torch.tensor([recs.index(k[0]) for k in keys])

    def centred(x: torch.Tensor) -> torch.Tensor:
        means = torch.stack([x[rec_of == r].mean(0) for r in range(len(recs))])
        return x - means[rec_of]

    # The binding window alone: perfect words and pictures, linked `lag` clips either side.
    for lag in (0, 1, 2, 3, 5):
        acc = hebbian_ceiling(learner, labels, media, trials, lag=lag,
                              perfect=("video", "audio"))
        print(f"perfect addresses, lag {lag}: {acc:.3f}")
    print(f"{len(trials)} trials; ceiling with perfect words, pictures hashed from:")
    for enc_seed in (0, 1):
        torch.manual_seed(enc_seed)
        enc = VideoClipEncoder(64, size).eval()
        with torch.no_grad():
            maps = []
            for i in range(0, len(keys), 256):
                v = torch.stack([media[k][1] for k in keys[i:i + 256]])
                idx = torch.linspace(0, v.shape[1] - 1, 3)[:-1].round().long()
                x = (v[:, idx].float() / 255.0 - 0.5) / 0.25
                maps.append(enc.convs(x.reshape(v.shape[0], -1, *x.shape[-2:])))
            fmap = torch.cat(maps)
        n, c, h, w = fmap.shape
        whole = centred(torch.cat([fmap.mean((2, 3)), fmap.amax((2, 3))], 1))
        locs = centred(fmap.permute(0, 2, 3, 1).reshape(n, h * w * c)).reshape(n * h * w, c)
        for hash_seed in (0, 1):
            variants = {
                "whole frame, 8 tables": lsh(whole, 8, BITS, 100 + hash_seed),
                f"each of {h * w} locations, 2 tables": lsh(locs, 2, BITS + 1,
                                                            200 + hash_seed).reshape(n, -1),
            }
            for name, ids in variants.items():
                video = {k: sorted(set(ids[i].tolist())) for i, k in enumerate(keys)}
                acc = hebbian_ceiling(learner, labels, media, trials, perfect=("audio",),
                                      addresses=(video, {k: [] for k in keys}))
                nodes = sum(len(v) for v in video.values()) / len(video)
                print(f"encoder seed {enc_seed}, hash seed {hash_seed}, {name}: "
                      f"{acc:.3f} ({nodes:.0f} nodes a picture)", flush=True)


if __name__ == "__main__":
    main()
