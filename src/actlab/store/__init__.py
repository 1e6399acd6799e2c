"""Activation store: harvest activations into Zarr with streaming statistics; read them back."""

from actlab.store.harvest import harvest
from actlab.store.readers import MixingBuffer, StoreDataset
from actlab.store.stats import SiteStats
from actlab.store.store import SiteArray, Store, VerifyReport, open_store

__all__ = ["MixingBuffer", "SiteArray", "SiteStats", "Store", "StoreDataset", "VerifyReport", "harvest", "open_store"]
