"""Two-stream labeled/unlabeled loading, epoch reseeding and the checkpointable RNG state."""

import io
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import Dataset
from monai.transforms import Compose, RandGaussianNoised

from monai_bundles.common.rng import RNGState
from monai_bundles.common.two_stream import (
    EpochTwoStreamLoader,
    TwoStreamEpochSeeder,
    build_two_stream_loader,
)

torch.set_num_threads(1)


def _dataset(n, first_id, with_label):
    items = []
    for i in range(first_id, first_id + n):
        item = {"image": torch.zeros(1, 4, 4), "id": i}
        if with_label:
            item["label"] = torch.zeros(1, 4, 4)
        items.append(item)
    return Dataset(items, transform=Compose([RandGaussianNoised(keys="image", prob=1.0)]))


def _loader(seed=0, num_workers=0, epoch_length=7):
    return build_two_stream_loader(
        _dataset(5, 0, True), _dataset(9, 100, False), 2, 3, epoch_length, num_workers, seed
    )


def _draw(loader):
    """[(labeled ids, unlabeled ids, labeled images, unlabeled images)] of one pass."""
    return [
        (
            s["labeled"]["id"].tolist(),
            s["unlabeled"]["id"].tolist(),
            s["labeled"]["image"],
            s["unlabeled"]["image"],
        )
        for s in loader
    ]


def _same(a, b):
    return len(a) == len(b) and all(
        x[0] == y[0] and x[1] == y[1] and torch.equal(x[2], y[2]) and torch.equal(x[3], y[3])
        for x, y in zip(a, b)
    )


def test_batch_ratio_streams_and_epoch_length():
    loader = _loader(epoch_length=7)
    steps = _draw(loader)
    assert len(loader) == 7 and len(steps) == 7, f"len {len(loader)}, steps {len(steps)}"
    for ids_l, ids_u, image_l, image_u in steps:
        assert len(ids_l) == 2 and len(ids_u) == 3, f"batch sizes {len(ids_l)}, {len(ids_u)}"
        assert set(ids_l) <= set(range(5)), f"labeled stream drew {ids_l}"
        assert set(ids_u) <= set(range(100, 109)), f"unlabeled stream drew {ids_u}"
        assert image_l.shape == (2, 1, 4, 4) and image_u.shape == (3, 1, 4, 4)
    # 5 labeled items, batch 2, drop_last: a pass is 2 batches of distinct items, then re-iterate
    first_pass = steps[0][0] + steps[1][0]
    assert len(set(first_pass)) == 4, f"a pass repeated an item: {first_pass}"
    step = next(iter(loader))
    assert "label" in step["labeled"] and "label" not in step["unlabeled"], f"keys {step}"


@pytest.mark.parametrize("num_workers", [0, 1])
def test_set_epoch_reproduces_samples_and_augmentations(num_workers):
    loader = _loader(seed=3, num_workers=num_workers, epoch_length=3)
    loader.set_epoch(2)
    epoch2 = _draw(loader)
    loader.set_epoch(3)
    epoch3 = _draw(loader)
    assert not _same(epoch2, epoch3), "epochs 2 and 3 drew the same stream"
    resumed = _loader(seed=3, num_workers=num_workers, epoch_length=3)
    resumed.set_epoch(2)
    assert _same(_draw(resumed), epoch2), "a fresh loader at epoch 2 differs from the first run"
    other_seed = _loader(seed=4, num_workers=num_workers, epoch_length=3)
    other_seed.set_epoch(2)
    assert not _same(_draw(other_seed), epoch2), "the seed has no effect"


def test_epoch_seeder_in_ignite():
    loader = _loader(seed=1, epoch_length=2)
    seen = {}

    def step(engine, batch):
        seen.setdefault(engine.state.epoch, []).append(batch["labeled"]["id"].tolist())

    engine = Engine(step)
    TwoStreamEpochSeeder(loader).attach(engine)
    engine.run(loader, max_epochs=3)
    assert engine.state.iteration == 6, f"ran {engine.state.iteration} iterations, expected 6"
    check = _loader(seed=1, epoch_length=2)
    for epoch in (1, 3):
        check.set_epoch(epoch)
        assert [s[0] for s in _draw(check)] == seen[epoch], f"epoch {epoch} not reproducible"


def test_empty_stream_fails_loudly():
    with pytest.raises(AssertionError, match="fewer than its batch size"):
        build_two_stream_loader(_dataset(1, 0, True), _dataset(4, 10, False), 2, 2, 3)
    with pytest.raises(AssertionError, match="epoch_length"):
        EpochTwoStreamLoader([], [], epoch_length=0)


def test_rng_state_round_trips_through_a_checkpoint():
    rng = RNGState()
    buffer = io.BytesIO()
    torch.save({"rng": rng.state_dict()}, buffer)
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    buffer.seek(0)
    rng.load_state_dict(torch.load(buffer, weights_only=True)["rng"])  # as CheckpointLoader
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert again == expected, f"restored RNG drew {again}, expected {expected}"


def test_labeled_only_stream_draws_the_same_labeled_samples():
    """unlabeled_batch_size 0 (the supervised baseline): no unlabeled loading, and the labeled
    ids and augmented images are exactly those of the two-stream loader, epoch by epoch."""
    both = _loader()
    alone = build_two_stream_loader(_dataset(5, 0, True), _dataset(9, 100, False), 2, 0, 7, 0, 0)
    assert alone.unlabeled_loader is None
    for epoch in (0, 3):
        both.set_epoch(epoch)
        alone.set_epoch(epoch)
        steps = list(alone)
        assert len(steps) == 7 and all(set(s) == {"labeled"} for s in steps)
        for s, (ids, _, images, _) in zip(steps, _draw(both)):
            assert s["labeled"]["id"].tolist() == ids
            assert torch.equal(s["labeled"]["image"], images)


def test_look_ahead_over_passes_draws_the_same_batches_as_plain_passes():
    """With workers, the next pass starts while the last batch of a pass is in use; the batches
    (samples and augmentations) equal those of plain back-to-back passes of the same loaders."""
    looked_ahead = _draw(_loader(seed=5, num_workers=1, epoch_length=7))  # 4 labeled passes
    plain = _loader(seed=5, num_workers=1, epoch_length=7)

    def passes(dl, n):
        out = []
        while len(out) < n:
            out += list(dl)
        return out[:n]

    lab, unl = passes(plain.labeled_loader, 7), passes(plain.unlabeled_loader, 7)
    expected = [
        (a["id"].tolist(), b["id"].tolist(), a["image"], b["image"]) for a, b in zip(lab, unl)
    ]
    assert _same(looked_ahead, expected)
