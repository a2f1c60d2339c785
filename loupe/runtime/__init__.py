"""The model runtime: everything that imports torch (Qwen3-VL, kernels, KV caches, the prefix cache)."""
