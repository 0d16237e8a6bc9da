"""Parameter shapes of real networks, built without torchvision: the sizes the benchmarks use."""

from __future__ import annotations


def resnet18_shapes(classes: int = 1000) -> dict[str, list[tuple[int, ...]]]:
    """ResNet-18's conv filters, BN vectors and classifier (11.7M weights, 20 BN layers)."""
    convs: list[tuple[int, ...]] = [(64, 3, 7, 7)]
    norms: list[tuple[int, ...]] = [(64,)]
    in_channels = 64
    for stage, channels in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride_change = stage > 0 and block == 0
            convs += [(channels, in_channels, 3, 3), (channels, channels, 3, 3)]
            norms += [(channels,), (channels,)]
            if stride_change:
                convs.append((channels, in_channels, 1, 1))
                norms.append((channels,))
            in_channels = channels
    return {"conv": convs, "bn": norms, "linear": [(classes, 512)]}


def resnet50_shapes(classes: int = 1000) -> dict[str, list[tuple[int, ...]]]:
    """ResNet-50's conv filters, BN vectors and classifier (25.5M weights, 53 BN layers)."""
    convs: list[tuple[int, ...]] = [(64, 3, 7, 7)]
    norms: list[tuple[int, ...]] = [(64,)]
    in_channels = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            convs += [(width, in_channels, 1, 1), (width, width, 3, 3), (width * 4, width, 1, 1)]
            norms += [(width,), (width,), (width * 4,)]
            if block == 0:
                convs.append((width * 4, in_channels, 1, 1))
                norms.append((width * 4,))
            in_channels = width * 4
    return {"conv": convs, "bn": norms, "linear": [(classes, 2048)]}


def bert_base_shapes(vocabulary: int = 30522, layers: int = 12) -> dict[str, list[tuple[int, ...]]]:
    """BERT-base (~110M parameters): the Linear weights are the prunable ones; LayerNorm gains
    ("bn") stand in for BN gamma (EarlyBERT's per-channel scales); embeddings and biases are kept."""
    hidden, ffn = 768, 3072
    linear: list[tuple[int, ...]] = []
    bias: list[tuple[int, ...]] = []
    norms: list[tuple[int, ...]] = [(hidden,)]  # the embeddings' LayerNorm
    for _ in range(layers):
        linear += [(hidden, hidden)] * 4 + [(ffn, hidden), (hidden, ffn)]
        bias += [(hidden,)] * 4 + [(ffn,), (hidden,)]
        norms += [(hidden,), (hidden,)]
    linear.append((hidden, hidden))
    bias.append((hidden,))
    embedding = [(vocabulary, hidden), (512, hidden), (2, hidden)]
    return {"conv": [], "linear": linear, "bn": norms, "bias": bias, "embedding": embedding}
