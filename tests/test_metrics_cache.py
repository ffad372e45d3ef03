"""The embedding cache (robustsim.metrics.embedding_cache): verified by stamps, an empty or broken file recomputed."""

from __future__ import annotations

import numpy as np


def test_an_empty_embedding_cache_file_is_recomputed(tmp_path):
    from robustsim.data.imageset import ArrayImages
    from robustsim.metrics.embedding_cache import cached_embeddings
    from robustsim.zoo import load_metric

    metric = load_metric("lipsim-nano")
    images = ArrayImages(np.random.default_rng(0).integers(0, 255, (6, 3, 64, 64), dtype=np.uint8), None, "t", "t")
    first = np.array(cached_embeddings(metric, images, tmp_path, progress=False))
    (cache_file,) = tmp_path.glob("emb-*.npy")
    cache_file.write_bytes(b"")
    assert np.allclose(cached_embeddings(metric, images, tmp_path, progress=False), first)
