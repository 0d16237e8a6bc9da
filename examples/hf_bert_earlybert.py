"""EarlyBERT through the Hugging Face Trainer: slim a tiny BERT, draw its ticket early, prune it.

A tiny ``BertForSequenceClassification`` (built from a config: nothing is downloaded) learns a
synthetic task: does the marker token appear in a random token sequence? ``attach_slimming``
gives every attention head and FFN neuron a learnable coefficient; ``EarlyBird`` with EarlyBERT's
settings (queue 3, eps 0.01) adds their L1 term and tracks the mask every epoch, run by
``SparseTicketCallback``, which stops the Trainer once the ticket is drawn and writes it to
``hf_bert_earlybert/ticket.safetensors``. ``prune_transformer`` then removes the pruned heads and
neurons for real. Needs transformers and accelerate (``pip install 'sparseticket[hf]'``)::

    python examples/hf_bert_earlybert.py
"""

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from sparseticket import EarlyBird, attach_slimming, prune_transformer
from sparseticket.integrations.huggingface import SparseTicketCallback

CLS, MARKER, VOCAB, LENGTH, MAX_EPOCHS = 2, 5, 64, 16, 30


class MarkerTask(torch.utils.data.Dataset):
    """Random token sequences (ids 6..63 after [CLS]); label 1 where the marker was written in."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(6, VOCAB, (count, LENGTH), generator=generator)
        self.labels = torch.randint(0, 2, (count,), generator=generator)
        where = torch.randint(1, LENGTH, (count,), generator=generator)
        rows = self.labels.nonzero().squeeze(1)
        self.ids[rows, where[rows]] = MARKER
        self.ids[:, 0] = CLS

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: MarkerTask) -> float:
    model.eval()
    return (model(input_ids=data.ids).logits.argmax(-1) == data.labels).float().mean().item()


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2)
    model = BertForSequenceClassification(config)
    attach_slimming(model)  # one coefficient per head and per FFN neuron of every BertLayer
    eb = EarlyBird(model, queue=3, eps=0.01)
    args = TrainingArguments(output_dir="hf_bert_earlybert", per_device_train_batch_size=32,
                             num_train_epochs=MAX_EPOCHS, learning_rate=2e-3, report_to=[], use_cpu=True,
                             save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=MarkerTask(512, seed=0),
                      callbacks=[SparseTicketCallback(eb)])
    trainer.train()
    test = MarkerTask(256, seed=1)
    print(f"ticket drawn at epoch {eb.found_epoch} (of at most {MAX_EPOCHS}); "
          f"test accuracy {accuracy(model, test):.3f}; ticket in {args.output_dir}/ticket.safetensors")
    pruned = prune_transformer(model, eb.channel_mask())  # a smaller copy: pruned heads/neurons removed
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, pruned))
    heads = [layer.attention.self.num_attention_heads for layer in pruned.bert.encoder.layer]
    print(f"parameters: {before} -> {after}; heads per layer {heads}; "
          f"pruned test accuracy (before fine-tuning) {accuracy(pruned, test):.3f}")


if __name__ == "__main__":
    main()
