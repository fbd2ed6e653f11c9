"""selflabel: the reference SeLa trainer (self-labelling, Asano et al., ICLR 2020) on equipart.

``sela-train`` trains a network by alternating optimal-transport label assignment
(``equipart.assign_labels``, warm-started per head) with cross-entropy training;
``sela-eval CHECKPOINT`` measures NMI, ANMI, ARI, Hungarian accuracy, weighted kNN and a
linear probe on the held-out split. ``python -m selflabel train|eval ...`` runs the same.
"""

from .config import PRESETS, Config
from .train import Trainer, evaluate_model

__version__ = "0.1.0"

__all__ = ["PRESETS", "Config", "Trainer", "evaluate_model"]
