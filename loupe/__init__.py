"""Loupe: ask questions about images with Qwen3-VL on a CPU.

Layers, each importing only those below it (tests/test_layering.py and import-linter check this):
web -> history, engine -> runtime -> protocol -> settings, errors, inference.
"""
