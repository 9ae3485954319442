"""The gRPC inference server: registry, folded-model cache, batching, servicers (README, Layout)."""
