"""deploy() on run folders written by `sparseticket search`: each method, the masked dense model
rebuilt by hand from the run's files as the reference; round_to; both exports."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_outputs, digits, rebuilt, search_run, state_of, zero_channels, zero_weights
from torch import nn

from sparseticket.deploy import SparseLinear, deploy, export_program
from sparseticket.deploy.run_folder import load_run
from sparseticket.driver.training import accuracy
from sparseticket.methods import Ticket


@pytest.mark.parametrize("method", ["earlybird", "worm"])
def test_channel_run_deploys_to_the_masked_model(tmp_path, method):
    run = search_run(tmp_path, method)
    ticket = Ticket.load(run / "ticket.safetensors")
    result = deploy(run, batch_sizes=(1, 4), repeats=1)
    kept = result.ticket.channel_masks
    assert set(kept) == set(ticket.channel_masks)
    slim_modules = dict(result.model.named_modules())
    for name, drawn in ticket.channel_masks.items():
        assert bool((kept[name] | ~drawn).all())  # never fewer channels than drawn
        assert slim_modules[name].num_features == int(kept[name].sum()) < drawn.numel() or drawn.all()
    reference = rebuilt(run)
    reference.load_state_dict(torch.load(run / "searched.pt", weights_only=True)["model"])
    zero_channels(reference, kept)
    assert_same_outputs(result.model, reference, digits())
    report = result.report
    assert report.kind == "channel" and report.error <= 1e-5
    assert report.deployed.params == sum(p.numel() for p in result.model.parameters()) < report.dense.params
    assert report.deployed.macs < report.dense.macs and set(report.deployed.latency_ms) == {1, 4}

    rounded = deploy(run, round_to=8, measure=False)
    for name, drawn in ticket.channel_masks.items():
        count = int(rounded.ticket.channel_masks[name].sum())
        assert count % 8 == 0 or count == drawn.numel()
        assert slim_modules[name].num_features <= dict(rounded.model.named_modules())[name].num_features
    rounded_reference = rebuilt(run)
    rounded_reference.load_state_dict(torch.load(run / "searched.pt", weights_only=True)["model"])
    assert_same_outputs(rounded.model, zero_channels(rounded_reference, rounded.ticket.channel_masks), digits())
    # what round_to changes in test accuracy: the ticket as drawn vs the rounded ticket, by hand
    test = load_run(run).split.test_loader()
    drawn_reference = rebuilt(run)
    drawn_reference.load_state_dict(torch.load(run / "searched.pt", weights_only=True)["model"])
    tolerance = 2 / len(test.dataset)  # outputs equal to 1e-7: an argmax tie may still flip
    assert rounded.report.accuracy_drawn == pytest.approx(
        accuracy(zero_channels(drawn_reference, ticket.channel_masks), test), abs=tolerance)
    assert rounded.report.accuracy_deployed == pytest.approx(accuracy(rounded_reference, test), abs=tolerance)
    assert "test accuracy:" in rounded.report.table()

    if method != "earlybird":
        return  # one torch.export round trip from a channel run is enough (the CLI test exports WORM's kind too)
    program, exported = export_program(result.model, digits(), path=tmp_path / "slim.pt2")
    loaded = torch.export.load(tmp_path / "slim.pt2")
    assert_same_outputs(loaded.module(), reference, digits())
    assert_same_outputs(program.module(), reference, digits(3))
    assert exported.dynamic_batch and exported.error <= 1e-5


@pytest.mark.parametrize("method", ["gemminer", "imp"])
def test_weight_run_deploys_to_the_masked_model(tmp_path, method):
    run = search_run(tmp_path, method)
    ticket = Ticket.load(run / "ticket.safetensors")
    result = deploy(run, batch_sizes=(1, 8), repeats=1)
    reference = rebuilt(run)
    reference.load_state_dict(state_of(run / "checkpoint.pt"))  # the fine-tuned weights
    zero_weights(reference, ticket.masks)
    assert_same_outputs(result.model, reference, digits())
    report = result.report
    assert report.kind == "weight" and {layer.kind for layer in report.layers} == {"linear", "conv"}
    assert all(layer.format == "dense" for layer in report.layers if layer.kind == "conv")
    for layer in report.layers:  # the format the report names is the module in the model
        module = result.model.get_submodule(layer.name)
        assert isinstance(module, SparseLinear) == (layer.format != "dense")
    with pytest.raises(ValueError, match="round_to=8 applies to channel tickets"):
        deploy(run, round_to=8)
    if method != "imp":
        return  # one ONNX round trip from a weight run is enough
    onnx = pytest.importorskip("onnxruntime")
    exported = result.export(tmp_path / "model.onnx", "onnx")
    session = onnx.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    images = digits(5)
    (output,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        want = reference(images)
    assert float((torch.from_numpy(output) - want).abs().max()) / max(1.0, float(want.abs().max())) <= 1e-5
    assert exported.error <= 1e-5 and isinstance(result.model, nn.Module)
