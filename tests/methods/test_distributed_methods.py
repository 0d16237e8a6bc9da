"""Methods under DistributedDataParallel (2 gloo processes): identical masks and epochs on every
rank, and a divergence between ranks becomes an error on every rank instead of a hang."""

from __future__ import annotations

import torch
import torch.distributed as dist
from gloo_ranks import WORLD, init_gloo, spawn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.methods import IMP, WORM, EarlyBird
from sparseticket.methods.consistency import assert_same_on_all_ranks, rank_checks, rank_checks_enabled


def _worm_worker(rank: int, port: int, results) -> None:
    init_gloo(rank, port)
    try:
        data = load_digits_split()
        torch.manual_seed(0)
        model = vgg_small(width=8)
        worm = WORM(model, queue=3)
        imp = IMP(model)
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        images, labels = data.train_images[:512], data.train_labels[:512]
        shard = slice(rank * 256, (rank + 1) * 256)  # each rank its half of the global batch
        for _epoch in range(6):
            for start in range(0, 256, 64):
                optimizer.zero_grad()
                batch = slice(shard.start + start, shard.start + start + 64)
                nn.functional.cross_entropy(ddp(images[batch]), labels[batch]).backward()
                worm.after_backward()  # acts on the all-reduced gradients
                optimizer.step()
            worm.epoch_end()
        imp.prune_round()
        masks = worm.channel_mask()
        results[rank] = {"found": worm.found_epoch, "trigger": worm.trigger_epoch,
                         "history": worm.history, "masks": {k: v.tolist() for k, v in masks.items()},
                         "imp_density": imp.density}
    finally:
        dist.destroy_process_group()


def test_worm_and_imp_agree_on_every_rank():
    results = spawn(_worm_worker)
    assert results[0] == results[1]
    assert results[0]["history"][-1]  # the queue was filled: distances exist


def _divergence_worker(rank: int, port: int, results) -> None:
    init_gloo(rank, port)
    try:
        mask = torch.tensor([True, False, rank == 1])
        found = {}
        try:
            assert_same_on_all_ranks(mask, "test mask")
            found["checked"] = "no error"
        except RuntimeError as error:
            found["checked"] = str(error)
        # one model per rank on purpose (a sweep): with the checks off, EarlyBird runs on each
        torch.manual_seed(rank)
        model = vgg_small(width=8)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.uniform_()  # gammas differ between the ranks
        with rank_checks(False):
            assert_same_on_all_ranks(mask, "test mask")
            earlybird = EarlyBird(model, queue=2)
            for _ in range(2):
                earlybird.epoch_end()
        found["independent_masks"] = {k: v.tolist() for k, v in earlybird.channel_mask().items()}
        found["enabled_after"] = rank_checks_enabled()
        results[rank] = found
    finally:
        dist.destroy_process_group()


def test_divergence_raises_on_every_rank_unless_checks_are_off():
    results = spawn(_divergence_worker)
    assert all("test mask differs between ranks" in results[rank]["checked"] for rank in range(WORLD))
    assert "rank_checks(False)" in results[0]["checked"]  # the error names the way out
    assert results[0]["independent_masks"] != results[1]["independent_masks"]  # they did differ
    assert results[0]["enabled_after"] and results[1]["enabled_after"]


def _error_worker(rank: int, port: int, results, linger: bool) -> None:
    import time

    init_gloo(rank, port, timeout_s=5)
    start = time.monotonic()
    try:
        if rank == 1:
            results[rank] = "raised"
            if linger:  # the failing rank stays alive (e.g. it caught the error) past the timeout
                time.sleep(8)
            return
        assert_same_on_all_ranks(torch.ones(3), "mask")
        results[rank] = "no error"
    except RuntimeError:
        results[rank] = time.monotonic() - start


def test_error_on_one_rank_surfaces_on_the_other_within_the_timeout():
    for linger in (False, True):
        results = spawn(_error_worker, linger)
        assert results[1] == "raised"
        assert isinstance(results[0], float) and results[0] < 7.0, (linger, results[0])
