"""The masked-language-model head, with Hugging Face's names and shapes so that an exported
directory loads in ``transformers.BertForMaskedLM``:

    cls.predictions.transform.dense       H -> H, then the encoder's activation
    cls.predictions.transform.LayerNorm
    cls.predictions.decoder               H -> vocab, its weight tied to the word embeddings
    cls.predictions.bias                  (vocab,)

MiniLM ships no such head: its transform starts from random weights (BERT's initialisation,
normal with std 0.02), the bias from zeros, and the decoder is the word embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from minbert.model.bert import _ACTIVATIONS, BertConfig

PREFIX = "cls.predictions."


class MLMTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))


class MLMHead(nn.Module):
    """Token states -> vocabulary logits; ``decoder`` shares the word-embedding matrix."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = MLMTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.word_embeddings = [word_embeddings]  # a list: not registered twice as a module
        nn.init.normal_(self.transform.dense.weight, std=0.02)
        nn.init.zeros_(self.transform.dense.bias)

    @property
    def decoder_weight(self) -> Tensor:
        return self.word_embeddings[0].weight

    def forward(self, hidden: Tensor, detach_decoder: bool = False) -> Tensor:
        """(..., H) -> (..., vocab). ``detach_decoder``: no gradient reaches the word
        embeddings through the tied decoder (the head's warm-up, encoder frozen)."""
        decoder = self.decoder_weight.detach() if detach_decoder else self.decoder_weight
        return self.transform(hidden) @ decoder.T + self.bias

    def hf_state_dict(self) -> dict[str, Tensor]:
        """The head under Hugging Face's names (the tied decoder written out, as HF saves it)."""
        state = {f"{PREFIX}transform.{k}": v for k, v in self.transform.state_dict().items()}
        state[f"{PREFIX}bias"] = self.bias.detach()
        state[f"{PREFIX}decoder.weight"] = self.decoder_weight.detach()
        state[f"{PREFIX}decoder.bias"] = self.bias.detach()
        return state

    def load_hf_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load the head from Hugging Face's names (strict on the transform and bias)."""
        own = {
            k[len(f"{PREFIX}transform.") :]: v
            for k, v in state.items()
            if k.startswith(f"{PREFIX}transform.")
        }
        self.transform.load_state_dict(own, strict=True)
        with torch.no_grad():
            self.bias.copy_(state[f"{PREFIX}bias"])
