"""Turn a prompt record into token ids: chat template or raw text, with a length policy."""

from __future__ import annotations

from dataclasses import dataclass

from traitlens.store.errors import InputError


class PromptTooLong(InputError):
    """A prompt exceeds the context and the policy is ``fail``."""


@dataclass
class Encoded:
    """Token ids of one prompt as the model will see them."""

    prompt_id: str
    ids: list[int]
    truncated: int  # tokens cut from the front to fit
    source: str


def uses_chat(tokenizer, chat: bool | None) -> bool:
    """``--chat/--no-chat``; by default chat exactly when the tokenizer has a chat template."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat is None:
        return has
    if chat and not has:
        raise InputError("--chat: this tokenizer has no chat template; use --no-chat")
    return chat


def render_ids(tokenizer, text: str | None, messages: list[dict] | None, chat: bool) -> list[int]:
    """Token ids for a prompt; with ``chat`` the template adds the assistant's turn opening."""
    if chat:
        msgs = messages if messages is not None else [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if messages is not None:  # a chat record without a template: plain "role: content" lines
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def encode(tokenizer, record, chat: bool, max_length: int, on_long: str = "truncate") -> Encoded:
    """Encode one record; prompts longer than ``max_length`` keep their last tokens (the end is
    what ``last`` pooling reads and what a chat template's generation prompt sits in) or fail."""
    ids = render_ids(tokenizer, record.text, record.messages, chat)
    cut = max(0, len(ids) - max_length)
    if cut:
        if on_long == "fail":
            raise PromptTooLong(f"{record.source}: prompt has {len(ids)} tokens, the model takes {max_length} "
                                "(use --on-long truncate to keep its last tokens, or shorten it)")
        ids = ids[cut:]
    return Encoded(record.prompt_id, ids, cut, record.source)
