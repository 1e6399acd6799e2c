"""Reading activations: probes and their stability, cluster quality, logit lens, layer voids,
activation sparsity, dictionaries (ITDA, TopK SAE) and representation similarity."""

from actlab.read.clusters import (
    AQIResult, aqi, aqi_chi_xb, aqi_score, calinski_harabasz, cluster_scores, davies_bouldin, dunn,
    learn_layer_weights, xie_beni,
)
from actlab.read.itda import ITDA, ITDADictionary, jaccard, matching_pursuit
from actlab.read.languages import LANGUAGES, WORDS, LatentLanguageResult, latent_language, translation_prompts
from actlab.read.lens import LensResult, LogitLens, residuals, unembed
from actlab.read.neurons import (
    NeuronAblation, RelationAblationResult, RelationNeurons, RelationNeuronSet, average_precision, relation_ablation,
)
from actlab.read.probes import (
    DiffMeanProbe, LDAProbe, LinearProbe, Probe, ProbeMetrics, ProbeSweep, SweepResult, probe_metrics, read_last,
)
from actlab.read.sae import SparseAutoencoder, TopKSAE
from actlab.read.similarity import Moments, SimilarityResult, cka, compare_stores, relative_similarity, svcca
from actlab.read.splice import DeltaCE, SparseCodes, SparseDictionary, load_dictionary
from actlab.read.sparsity import (
    CettTruncation, LayerCalibration, SparsityResult, SparsityStep, ppl_sparsity, truncation_edits,
)
from actlab.read.stability import StabilityResult, stability, stability_of_features
from actlab.read.voids import LayerVoids, SkipLayers, VoidsResult, lac_active, layer_voids

__all__ = [
    "AQIResult", "CettTruncation", "DeltaCE", "DiffMeanProbe", "ITDA", "ITDADictionary", "LANGUAGES",
    "LDAProbe", "LatentLanguageResult", "LayerCalibration", "LayerVoids", "LensResult", "LinearProbe",
    "LogitLens", "Moments", "NeuronAblation", "Probe", "ProbeMetrics", "ProbeSweep", "RelationAblationResult",
    "RelationNeuronSet", "RelationNeurons", "SimilarityResult", "SkipLayers", "SparseAutoencoder",
    "SparseCodes", "SparseDictionary", "SparsityResult", "SparsityStep", "StabilityResult", "SweepResult",
    "TopKSAE", "VoidsResult", "WORDS", "aqi", "aqi_chi_xb", "aqi_score", "average_precision",
    "calinski_harabasz", "cka", "cluster_scores", "compare_stores", "davies_bouldin", "dunn", "jaccard",
    "lac_active", "latent_language", "layer_voids", "learn_layer_weights", "load_dictionary",
    "matching_pursuit", "ppl_sparsity", "probe_metrics", "read_last", "relation_ablation",
    "relative_similarity", "residuals", "stability", "stability_of_features", "svcca", "translation_prompts",
    "truncation_edits", "unembed", "xie_beni",
]
