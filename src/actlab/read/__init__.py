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
    "CettTruncation", "LayerCalibration", "NeuronAblation", "RelationAblationResult", "RelationNeuronSet",
    "RelationNeurons", "SparsityResult", "SparsityStep", "average_precision", "ppl_sparsity", "relation_ablation",
    "truncation_edits",
    "DeltaCE", "ITDA", "ITDADictionary", "SparseAutoencoder", "SparseCodes", "SparseDictionary", "TopKSAE", "jaccard",
    "load_dictionary", "matching_pursuit",
    "AQIResult", "DiffMeanProbe", "LDAProbe", "LinearProbe", "Probe", "ProbeMetrics", "ProbeSweep", "StabilityResult",
    "SweepResult", "probe_metrics", "read_last", "stability", "stability_of_features", "LANGUAGES", "LatentLanguageResult", "LayerVoids", "LensResult", "LogitLens", "Moments",
    "SimilarityResult", "SkipLayers", "VoidsResult", "WORDS", "aqi", "aqi_chi_xb", "aqi_score",
    "calinski_harabasz", "cka", "cluster_scores", "compare_stores", "davies_bouldin", "dunn", "lac_active",
    "latent_language", "layer_voids", "learn_layer_weights", "relative_similarity", "residuals", "svcca",
    "translation_prompts", "unembed", "xie_beni",
]
