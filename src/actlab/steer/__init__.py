"""Steering: fit vectors from contrastive prompts, apply them as edits, search and measure them.

```python
pairs = al.data.prompts("sentiment")
vec = al.steer.DiffMean().fit(lab, pairs, sites="blocks.8-16.resid_post")
with lab.edit(vec.add(alpha=4.0, tokens="generated")):
    lab.generate("My day was", max_new_tokens=40)
```
"""

from actlab.steer.conditional import ConditionalSteering, ConditionalVector
from actlab.steer.controller import SteeringController, WeightedSteering
from actlab.steer.effects import SteeringEffect, measure_effect
from actlab.steer.extract import EAST, DiffMean, PCACenter, PCADiff, ProbeDirection
from actlab.steer.metrics import ActionEntropy, ProbeScore, RefusalRate, Sentiment
from actlab.engine.reading import read_activations
from actlab.steer.search import AlphaSweep, LayerSearch, SearchResult
from actlab.steer.vector import SteeringEdits, SteeringVector

METHODS = {"diffmean": DiffMean, "pca-diff": PCADiff, "pca-center": PCACenter, "probe": ProbeDirection}

__all__ = [
    "EAST", "METHODS", "ActionEntropy", "AlphaSweep", "ConditionalSteering", "ConditionalVector", "DiffMean", "LayerSearch",
    "PCACenter", "PCADiff", "ProbeDirection", "ProbeScore", "RefusalRate", "SearchResult", "Sentiment",
    "SteeringController", "SteeringEdits", "SteeringEffect", "SteeringVector", "WeightedSteering",
    "measure_effect", "read_activations",
]
