"""A tiny random-weight Llama in GGUF, written with the `gguf` package, for llama.cpp's server to serve in tests.

A byte-level BPE vocabulary (GPT-2's byte alphabet, a few merges, ChatML's markers) and a ChatML chat
template, so llama.cpp tokenises and templates it as it would a real model; two layers of random
weights. The output rows of the control tokens and of every byte outside printable ASCII are zero, so
greedy decoding never ends an answer early nor cuts a UTF-8 character between two stream pieces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

SEED = 1234
EMBED, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 128, 512
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-character map, in byte order: the tokens a byte-level BPE starts from."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[byte] = chr(byte)
        else:
            characters[byte] = chr(256 + extra)
            extra += 1
    return [characters[byte] for byte in range(256)]


def build_tiny_gguf(path: Path) -> Path:
    """Write the model to `path` (a .gguf file) and return it."""
    alphabet = byte_alphabet()
    tokens = alphabet + [merge.replace(" ", "") for merge in MERGES] + SPECIAL
    types = [TokenType.NORMAL] * (len(tokens) - len(SPECIAL)) + [TokenType.CONTROL] * len(SPECIAL)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("loupe-test-tiny-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(0)  # all float32
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in _weights(len(tokens), alphabet, tokens).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _weights(vocab: int, alphabet: list[str], tokens: list[str]) -> dict[str, np.ndarray]:
    """Random float32 weights (numpy's row-major shapes; gguf writes them in ggml's order)."""
    rng = np.random.default_rng(SEED)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    head = EMBED // HEADS
    weights = {"token_embd.weight": normal(vocab, EMBED), "output_norm.weight": np.ones(EMBED, np.float32)}
    output = normal(vocab, EMBED)
    ascii_printable = {alphabet[byte] for byte in range(32, 127)} | {"Ġ"}
    for index, token in enumerate(tokens):
        if (len(token) == 1 and token not in ascii_printable) or token in SPECIAL:
            output[index] = 0.0  # logit 0: never the greedy pick over the random others
    weights["output.weight"] = output
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        weights |= {
            f"{block}.attn_norm.weight": np.ones(EMBED, np.float32),
            f"{block}.attn_q.weight": normal(HEADS * head, EMBED),
            f"{block}.attn_k.weight": normal(KV_HEADS * head, EMBED),
            f"{block}.attn_v.weight": normal(KV_HEADS * head, EMBED),
            f"{block}.attn_output.weight": normal(EMBED, HEADS * head),
            f"{block}.ffn_norm.weight": np.ones(EMBED, np.float32),
            f"{block}.ffn_gate.weight": normal(FFN, EMBED),
            f"{block}.ffn_up.weight": normal(FFN, EMBED),
            f"{block}.ffn_down.weight": normal(EMBED, FFN),
        }
    return weights
