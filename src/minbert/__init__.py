"""minbert: a from-scratch BERT and a multi-task fine-tuning toolkit."""

from minbert.model.bert import BertConfig, BertModel
from minbert.model.loading import export_pretrained, load_pretrained
from minbert.model.tokenizer import Tokenizer

__all__ = ["BertConfig", "BertModel", "Tokenizer", "export_pretrained", "load_pretrained"]
__version__ = "0.1.0"
