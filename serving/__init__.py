"""The gRPC inference server: registry, folded-model cache, batching, servicers (docs/architecture.md)."""
