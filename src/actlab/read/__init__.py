"""Reading activations: probes and their stability, cluster quality, logit lens, layer voids,
activation sparsity, dictionaries (ITDA, TopK SAE) and representation similarity."""
