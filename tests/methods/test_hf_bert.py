"""Hugging Face BERT (and RoBERTa): EarlyBERT slimming, exact physical pruning, IMP and Gem-Miner on its Linears.

Tiny models from configs (no downloads): 2 layers, 4 heads of 8 features, 64 FFN neurons.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from sparseticket.methods import IMP, WORM, EarlyBird, GemMiner  # noqa: E402
from sparseticket.methods.bn_channels import channel_layers  # noqa: E402
from sparseticket.methods.transformer import (  # noqa: E402
    attach_slimming,
    prune_transformer,
    slimming_coefficients,
)

HIDDEN, HEADS, HEAD_DIM, FFN, LAYERS, VOCAB, LABELS = 32, 4, 8, 64, 2, 100, 3
BATCH, LENGTH = 4, 9


def make_model(generator: torch.Generator, kind: str = "bert", attention: str = "sdpa") -> nn.Module:
    """A tiny sequence classifier, initialised from the test's generator (global RNG left as it was)."""
    settings = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN,
                    num_hidden_layers=LAYERS, vocab_size=VOCAB, num_labels=LABELS, max_position_embeddings=32)
    config_class, model_class = {
        "bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
        "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
    }[kind]
    config = config_class(**settings)
    config._attn_implementation = attention
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        return model_class(config)


def prefix(kind: str) -> str:
    return "bert" if kind == "bert" else "roberta"


def batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Token ids and an attention mask with padding at the end of two sequences."""
    input_ids = torch.randint(3, VOCAB, (BATCH, LENGTH), generator=generator)
    attention_mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    attention_mask[1, 5:] = 0
    attention_mask[3, 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def expected_names(kind: str) -> list[str]:
    return [f"{prefix(kind)}.encoder.layer.{i}.{part}_coefficients" for i in range(LAYERS) for part in ("head", "ffn")]


def linear_weight_names(model: nn.Module) -> list[str]:
    """Every nn.Linear weight of the model, by hand from named_modules."""
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ("bert", "roberta"))
def test_attach_leaves_logits_unchanged(kind: str, generator: torch.Generator) -> None:
    model = make_model(generator, kind).eval()
    inputs = batch(generator)
    with torch.no_grad():
        before = model(**inputs).logits
    names = attach_slimming(model)
    assert names == expected_names(kind)
    assert list(slimming_coefficients(model)) == names
    for name in names:
        coefficients = model.get_submodule(name)
        assert coefficients.weight.tolist() == [1.0] * (HEADS if "head" in name else FFN)
        assert coefficients.group == ("ffn" if "ffn" in name else f"heads:{name.rsplit('.', 1)[0]}")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, rtol=0, atol=1e-6)
    state = model.state_dict()
    assert f"{prefix(kind)}.encoder.layer.0.head_coefficients.weight" in state
    assert not any("_coefficients" in key and "parametrizations" in key for key in state)


def test_earlybird_tracks_and_regularises_coefficients(generator: torch.Generator) -> None:
    model = make_model(generator)
    names = attach_slimming(model)
    eb = EarlyBird(model, queue=3, eps=0.01)
    assert [layer.name for layer in eb.layers] == names == [layer.name for layer in channel_layers(model)]
    assert eb.channels == LAYERS * HEADS + LAYERS * FFN
    assert [layer.name for layer in WORM.for_transformers(model).layers] == names
    coefficients = slimming_coefficients(model)
    with torch.no_grad():  # mixed signs: sign(c) must follow each coefficient
        for module in coefficients.values():
            signs = torch.randint(0, 2, module.weight.shape, generator=generator) * 2 - 1
            module.weight.copy_(signs * (torch.rand(module.weight.shape, generator=generator) + 0.5))
    inputs = batch(generator)
    labels = torch.randint(0, LABELS, (BATCH,), generator=generator)
    model(**inputs, labels=labels).loss.backward()
    before = {name: module.weight.grad.clone() for name, module in coefficients.items()}
    assert all(grad.abs().sum() > 0 for grad in before.values())
    eb.after_backward()
    for name, module in coefficients.items():
        expected = before[name] + eb.l1 * module.weight.detach().sign()
        torch.testing.assert_close(module.weight.grad, expected, rtol=0, atol=1e-9)


def kept_heads_and_neurons(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The effective keep masks, by hand: a mask with no True keeps its largest |coefficient|."""
    effective = {}
    for name, module in slimming_coefficients(model).items():
        keep = masks[name].clone()
        if not keep.any():
            keep[module.weight.detach().abs().argmax()] = True
        effective[name] = keep
    return effective


@pytest.mark.parametrize("kind,attention", (("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa")))
def test_pruning_is_exact(kind: str, attention: str, generator: torch.Generator) -> None:
    model = make_model(generator, kind, attention)
    attach_slimming(model)
    coefficients = slimming_coefficients(model)
    with torch.no_grad():
        for module in coefficients.values():
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
    masks = {name: torch.rand(module.weight.shape, generator=generator) < 0.5 for name, module in coefficients.items()}
    names = expected_names(kind)
    masks[names[0]] = torch.tensor([True, False, True, False])  # layer 0: two of four heads go
    masks[names[2]] = torch.zeros(HEADS, dtype=torch.bool)  # layer 1: all asked to go, the largest stays
    masks[names[3]][:2] = True  # some FFN neurons stay
    masks[names[3]][2] = False  # and at least one goes
    keep = kept_heads_and_neurons(model, masks)
    assert int(keep[names[2]].sum()) == 1
    model.eval()
    pruned = prune_transformer(model, masks)

    reference = model  # the slimmed model with the pruned coefficients zeroed
    with torch.no_grad():
        for name, module in coefficients.items():
            module.weight[~keep[name]] = 0
    inputs = batch(generator)
    with torch.no_grad():
        expected = reference(**inputs, output_hidden_states=True)
        actual = pruned(**inputs, output_hidden_states=True)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.hidden_states[-1], expected.hidden_states[-1], rtol=0, atol=1e-5)

    heads_removed = sum(int((~keep[n]).sum()) for n in names if n.endswith("head_coefficients"))
    neurons_removed = sum(int((~keep[n]).sum()) for n in names if n.endswith("ffn_coefficients"))
    # a head: its q/k/v rows and biases, its output columns, its coefficient;
    # a neuron: its intermediate row and bias, its output column, its coefficient
    per_head = 3 * (HIDDEN * HEAD_DIM + HEAD_DIM) + HIDDEN * HEAD_DIM + 1
    per_neuron = HIDDEN + 1 + HIDDEN + 1
    removed = heads_removed * per_head + neurons_removed * per_neuron
    assert parameter_count(reference) - parameter_count(pruned) == removed
    for index, layer in enumerate(getattr(pruned, prefix(kind)).encoder.layer):
        heads = int(keep[names[2 * index]].sum())
        neurons = int(keep[names[2 * index + 1]].sum())
        attention_module = layer.attention.self
        assert (attention_module.num_attention_heads, attention_module.all_head_size) == (heads, heads * HEAD_DIM)
        assert attention_module.query.weight.shape == (heads * HEAD_DIM, HIDDEN)
        assert layer.attention.output.dense.in_features == heads * HEAD_DIM
        assert (layer.intermediate.dense.out_features, layer.output.dense.in_features) == (neurons, neurons)
    for name, module in slimming_coefficients(pruned).items():  # kept coefficients stay attached, values kept
        assert torch.equal(module.weight.detach(), coefficients[name].weight.detach()[keep[name]])


def test_short_training_then_prune_and_train(generator: torch.Generator) -> None:
    model = make_model(generator)
    attach_slimming(model)
    eb = EarlyBird(model, queue=3, eps=0.01)
    inputs = batch(generator)
    labels = torch.randint(0, LABELS, (BATCH,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):  # epochs of two steps
        for _ in range(2):
            optimizer.zero_grad()
            model(**inputs, labels=labels).loss.backward()
            eb.after_backward()
            optimizer.step()
        eb.epoch_end()
    assert len(eb.history) == 4 and len(eb.distances) == 2
    masks = eb.channel_mask()
    small = eb.prune(example_inputs=inputs["input_ids"], measure_latency=False)
    report = eb.prune_report
    assert report.params_before == parameter_count(model) and report.params_after == parameter_count(small)
    assert report.params_after < report.params_before
    kept = {name: module.num_features for name, module in slimming_coefficients(small).items()}
    assert kept == {name: max(int(mask.sum()), 1) for name, mask in masks.items()}
    assert EarlyBird(small).channels == sum(kept.values())

    small.eval()  # no dropout: the loss change comes from the step
    optimizer = torch.optim.SGD(small.parameters(), lr=0.01)
    loss = small(**inputs, labels=labels).loss
    loss.backward()
    assert all(p.grad is not None for name, p in small.named_parameters() if "embeddings" not in name)
    assert all(module.weight.grad is not None for module in slimming_coefficients(small).values())
    optimizer.step()
    with torch.no_grad():
        assert small(**inputs, labels=labels).loss.item() < loss.item()


def test_imp_over_every_linear(generator: torch.Generator) -> None:
    model = make_model(generator)
    imp = IMP(model, exclude=())
    assert imp.names == linear_weight_names(model)
    weights = [model.get_parameter(name) for name in imp.names]
    total = sum(weight.numel() for weight in weights)
    magnitudes = torch.cat([weight.detach().abs().flatten() for weight in weights])
    pruned_count = math.ceil(0.2 * total)
    threshold = magnitudes.sort().values[pruned_count - 1]  # independent global magnitude rule
    density = imp.prune_round()
    assert imp.survivors() == total - pruned_count
    assert density == pytest.approx(0.8, abs=1 / total)
    expected = torch.cat([(w.detach().abs() > threshold).flatten() for w in weights])
    assert torch.equal(torch.cat([mask.flatten() for mask in imp.masks]), expected)

    inputs = batch(generator)
    labels = torch.randint(0, LABELS, (BATCH,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # the second step's momentum would move pruned weights without after_step
        optimizer.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        imp.after_backward()
        assert all(weight.grad[~mask].eq(0).all() for weight, mask in zip(weights, imp.masks))
        optimizer.step()
        imp.after_step()
        assert all(weight.detach()[~mask].eq(0).all() for weight, mask in zip(weights, imp.masks))
    survivors_nonzero = sum(int(weight.detach()[mask].ne(0).sum()) for weight, mask in zip(weights, imp.masks))
    assert survivors_nonzero == total - pruned_count  # the kept weights trained on


def test_gemminer_over_every_linear(generator: torch.Generator) -> None:
    model = make_model(generator)
    names = linear_weight_names(model)
    initial = {name: model.get_parameter(name).detach().clone() for name in names}
    gm = GemMiner(model, density=0.2, epochs=3, period=1)
    total = sum(weight.numel() for weight in initial.values())
    inputs = batch(generator)
    labels = torch.randint(0, LABELS, (BATCH,), generator=generator)
    for _epoch in range(1, 4):
        for _ in range(2):
            model(**inputs, labels=labels).loss.backward()
            gm.step()
        gm.epoch_end()
    assert int(gm.flags.sum()) == round(0.2 * total)
    ticket = gm.finish()
    assert list(ticket.masks) == names
    assert sum(int(mask.sum()) for mask in ticket.masks.values()) == round(0.2 * total)
    for name, mask in ticket.masks.items():
        weight = model.get_parameter(name).detach()
        assert mask.shape == weight.shape
        torch.testing.assert_close(weight, torch.where(mask, initial[name], 0.0), rtol=0, atol=0)
    assert model(**inputs).logits.isfinite().all()
