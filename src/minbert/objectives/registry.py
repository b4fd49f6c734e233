"""The extra terms a task's loss may add, by name: each is one file and one entry here.

A term's table is ``objectives.<task>.<name>`` (its ``Config``). Terms computed from the
outputs are added to the head loss in this order.
"""

from __future__ import annotations

from minbert.objectives.base import Term
from minbert.objectives.contrastive import Contrastive
from minbert.objectives.cosent import Cosent
from minbert.objectives.rdrop import RDrop

TERMS: dict[str, type[Term]] = {cls.name: cls for cls in (Cosent, RDrop, Contrastive)}
