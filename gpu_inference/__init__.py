"""The GPU worker's model side: the model catalog, the registry that loads and evicts pipelines,
the text-to-image run with its per-step callback, and cheap latent previews."""
