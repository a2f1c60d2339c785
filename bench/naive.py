"""The naive baseline: the plain transformers recipe a tutorial shows, on the benchmark's inputs.

Per request: the image file opened, chat template + image processor on the full-resolution image (no image budget),
then `model.generate`, the whole conversation re-encoded every time, no cache kept between
requests, requests one after another. transformers' Qwen3VLProcessor cannot be built without
torchvision (its video processor), so the tutorial's `processor.apply_chat_template` is done by
hand exactly as the processor does it: template text, image processor, image pads expanded.

Usage: python -m bench.naive --model DIR --dtype float32 --image photo.jpg --max-tokens 32 --out naive.json
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import resource
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
from transformers.generation.streamers import BaseStreamer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from bench import inputs

log = logging.getLogger("bench.naive")
IMAGE_PAD = "<|image_pad|>"


class TokenClock(BaseStreamer):
    """A generate() streamer that only notes when each new token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class NaiveModel:
    """Tokenizer, image processor and model, loaded the tutorial way."""

    def __init__(self, model_dir: str, dtype: str, device: str = "cpu"):
        begin = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
        model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        self.model = model.to(device).eval()
        self.device = device
        self.load_s = time.perf_counter() - begin

    def encode(self, messages: list[dict], image: Image.Image) -> dict:
        """What `processor.apply_chat_template(..., tokenize=True, return_dict=True)` returns."""
        conversation = [
            {
                "role": m["role"],
                "content": [
                    {"type": "image"} if part["type"] == "image_url" else {"type": "text", "text": part["text"]}
                    for part in m["content"]
                ],
            }
            for m in messages
        ]
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        pixels = self.image_processor(images=[image], return_tensors="pt")
        grid = pixels["image_grid_thw"]
        pads = int(grid[0].prod()) // self.image_processor.merge_size**2
        text = text.replace(IMAGE_PAD, IMAGE_PAD * pads, 1)
        encoded = self.tokenizer([text], return_tensors="pt")
        token_types = (encoded["input_ids"] == self.model.config.image_token_id).to(torch.int32)
        batch = {
            **encoded,
            "mm_token_type_ids": token_types,
            "pixel_values": pixels["pixel_values"],
            "image_grid_thw": grid,
        }
        return {name: value.to(self.device) for name, value in batch.items()}  # the tutorial's .to(model.device)

    @torch.inference_mode()
    def ask(self, messages: list[dict], image_file: bytes, max_tokens: int) -> dict:
        """One request, timed: open the image, encode, generate greedily exactly `max_tokens` tokens, decode.

        The image is opened per request, from its file's bytes, as the server decodes each request's.
        """
        start = time.perf_counter()
        batch = self.encode(messages, Image.open(io.BytesIO(image_file)).convert("RGB"))
        clock = TokenClock()
        output = self.model.generate(
            **batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, streamer=clock
        )
        new_tokens = output[0, batch["input_ids"].shape[1] :]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return timing(start, clock.times, batch, len(new_tokens), text)


def timing(start: float, token_times: list[float], batch: dict, tokens: int, text: str) -> dict:
    """A request's figures in the shape the HTTP measurements use."""
    first, last = token_times[0], token_times[-1]
    decode_tps = (len(token_times) - 1) / (last - first) if len(token_times) > 1 and last > first else None
    return {
        "ttft_s": first - start,
        "finished_s": last - start,
        "completion_tokens": tokens,
        "text": text,
        "image_tokens": int(batch["mm_token_type_ids"].sum()),
        "prompt_tokens": int(batch["input_ids"].shape[1]),
        "decode_tps": decode_tps,
    }


def run(model: NaiveModel, image: bytes, max_tokens: int, clients: int, measured: int) -> dict:
    """First turn, follow-up, and `clients` requests served one after another (`measured` of them run)."""
    result: dict = {"load_s": model.load_s, "image_size": list(Image.open(io.BytesIO(image)).size)}
    if model.device != "cpu":  # the GPU's lazy start (kernels, cuBLAS) stays out of the figures, as the server's
        model.ask(inputs.first_turn("image"), image, 2)  # warm-up at load keeps it out of its own
    log.info("naive: first turn")
    first = model.ask(inputs.first_turn("image"), image, max_tokens)
    result["first_turn"] = first
    log.info("naive: follow-up")
    result["follow_up"] = model.ask(inputs.follow_up("image", first["text"]), image, max_tokens)
    result["concurrent"] = sequential_clients(model, image, max_tokens, clients, measured, first)
    return result


def sequential_clients(
    model: NaiveModel, image: bytes, max_tokens: int, clients: int, measured: int, first: dict
) -> dict:
    """All clients arrive at 0 and are served in turn; unmeasured ones repeat the first turn's timing."""
    log.info("naive: %d clients one after another, %d of them run", clients, measured)
    begin = time.perf_counter()
    runs, offset = [], 0.0
    for index, question in enumerate(inputs.CLIENT_QUESTIONS[:clients]):
        if index < measured:
            offset = time.perf_counter() - begin
            answer = model.ask(inputs.first_turn("image", question), image, max_tokens)
        else:  # serving is sequential: this client waits for everyone before it, then takes as long
            answer = {**first, "derived": True}
        answer["ttft_s"] += offset
        answer["finished_s"] += offset
        offset = answer["finished_s"]
        runs.append(answer)
    wall = runs[-1]["finished_s"] if runs else 0.0
    return {"clients": runs, "wall_s": wall, "measured_clients": min(measured, clients)}


def peak_rss_bytes() -> int:
    """This process's peak resident set size."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    """Command line entry point: writes the baseline's figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (Hugging Face format)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--image", required=True, type=Path, help="the image file every request sends")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--measured-clients",
        type=int,
        help="clients actually run (default: all); the "
        "rest are served sequentially, so each takes the first turn's time after those before",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="where the model runs, e.g. cuda")
    parser.add_argument("--launched-at", type=float, help="time.time() when the caller launched this process")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    image = args.image.read_bytes()
    model = NaiveModel(args.model, args.dtype, args.device)
    if args.launched_at:  # like the server's load time: from launch (imports included) to ready
        model.load_s = time.time() - args.launched_at
    measured = args.clients if args.measured_clients is None else args.measured_clients
    result = run(model, image, args.max_tokens, args.clients, measured)
    result.update(dtype=args.dtype, threads=torch.get_num_threads(), peak_rss_bytes=peak_rss_bytes())
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
