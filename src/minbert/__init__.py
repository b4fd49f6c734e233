"""minbert: a from-scratch BERT and a multi-task fine-tuning toolkit."""

from minbert.model.bert import BertConfig, BertModel
from minbert.model.loading import export_pretrained, load_pretrained
from minbert.model.tokenizer import Tokenizer

__all__ = [
    "BertConfig",
    "BertModel",
    "Predictor",
    "Tokenizer",
    "export_pretrained",
    "load_pretrained",
]


def __getattr__(name: str):
    if name == "Predictor":  # on first use: it pulls in the config and the trainer's loading
        from minbert.eval.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'minbert' has no attribute {name!r}")


__version__ = "0.1.0"
