"""Transformers' own Qwen3VLProcessor, as a reference for the inputs `loupe/runtime/prompts.py` builds by hand."""

from __future__ import annotations

from transformers import Qwen3VLProcessor

from loupe.inference import ImagePart, Message


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor with no video processor: without torchvision transformers cannot resolve that class."""

    def check_argument_for_proper_class(self, argument_name: str, argument: object) -> object:
        """Accept a missing video processor; check everything else as transformers does."""
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def reference_inputs(backend, messages: list[Message], size: dict | None = None) -> dict:
    """The tutorial path: processor.apply_chat_template with the PIL images inline (resized within `size`)."""
    processor = ImageOnlyQwen3VLProcessor(
        image_processor=backend.image_processor,
        tokenizer=backend.tokenizer,
        video_processor=None,
        chat_template=backend.tokenizer.chat_template,
    )
    conversation = [
        {
            "role": m.role,
            "content": [
                {"type": "image", "image": p.image} if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
                for p in m.parts
            ],
        }
        for m in messages
    ]
    options = {} if size is None else {"size": size}
    return dict(
        processor.apply_chat_template(
            conversation, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt", **options
        )
    )
