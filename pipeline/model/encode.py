"""Turn a prompt record into token ids: chat template or raw text, with a length policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from traitlens.store.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, str]]  # a chat: [{"role": ..., "content": ...}, ...]


class PromptLike(Protocol):
    """What encoding reads of a prompt record (:class:`traitlens.pipeline.capture.corpus.PromptRecord`):
    ``text`` or ``messages`` is set, never both."""

    @property
    def prompt_id(self) -> str: ...
    @property
    def text(self) -> str | None: ...
    @property
    def messages(self) -> Messages | None: ...
    @property
    def source(self) -> str: ...
    @property
    def has_assistant_turn(self) -> bool: ...


class PromptTooLong(InputError):
    """A prompt exceeds the context and the policy is ``fail``."""


@dataclass
class Encoded:
    """Token ids of one prompt as the model will see them."""

    prompt_id: str
    ids: list[int]
    truncated: int  # tokens cut from the front to fit
    source: str
    assistant: list[tuple[int, int]] | None = None  # [start, end) of each given assistant turn in ``ids``


def uses_chat(tokenizer: PreTrainedTokenizerBase, chat: bool | None) -> bool:
    """``--chat/--no-chat``; by default chat exactly when the tokenizer has a chat template."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat is None:
        return has
    if chat and not has:
        raise InputError("--chat: this tokenizer has no chat template; use --no-chat")
    return chat


def rendered_text(tokenizer: PreTrainedTokenizerBase, text: str | None, messages: Messages | None, chat: bool) -> str:
    """The string :func:`render_ids` tokenises."""
    if chat:
        msgs = messages if messages is not None else [{"role": "user", "content": _plain(text)}]
        return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    if messages is not None:  # a chat record without a template: plain "role: content" lines
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return _plain(text)


def _plain(text: str | None) -> str:
    """The text of a record without messages (a record has one of the two)."""
    if text is None:
        raise ValueError("a prompt record has neither text nor messages")
    return text


def render_ids(tokenizer: PreTrainedTokenizerBase, text: str | None, messages: Messages | None, chat: bool) -> list[int]:
    """Token ids for a prompt; with ``chat`` the template adds the assistant's turn opening."""
    return list(tokenizer(rendered_text(tokenizer, text, messages, chat),
                          add_special_tokens=not chat)["input_ids"])


def assistant_char_spans(tokenizer: PreTrainedTokenizerBase, messages: Messages, rendered: str, chat: bool,
                         source: str) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of each assistant message's content in ``rendered``.

    Each turn is searched for after the text that precedes it: with a chat template, from the
    end of the conversation up to that turn rendered with its generation prompt (which is a
    prefix of the whole for every template we know; where it is not, from the previous turn's
    end). Templates that trim a message are matched on its trimmed text."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        content = m["content"].strip()
        if m["role"] != "assistant" or not content:
            continue
        start = cursor
        if chat:
            head = str(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)) if i else ""
            if rendered.startswith(head):
                start = max(start, len(head))
        at = rendered.find(content, start)
        if at < 0:
            raise InputError(f"{source}: assistant turn {i} is not found in the prompt as the chat template "
                             "renders it; use --no-chat, or a pooling other than assistant_mean")
        spans.append((at, at + len(content)))
        cursor = at + len(content)
    return spans


def render_with_assistant(tokenizer: PreTrainedTokenizerBase, record: PromptLike,
                          chat: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a chat record and the ``[start, end)`` token spans of its assistant turns'
    content (every token whose characters overlap the turn's text; the template's role markers
    and end-of-turn tokens are not part of it)."""
    if not record.has_assistant_turn:
        raise InputError(f"{record.source}: pooling assistant_mean needs a chat record (messages) with an "
                         "assistant turn; give such records, or use --pooling last/mean")
    messages = record.messages or []  # (has_assistant_turn: never empty)
    rendered = rendered_text(tokenizer, None, messages, chat)
    chars = assistant_char_spans(tokenizer, messages, rendered, chat, record.source)
    try:
        enc = tokenizer(rendered, add_special_tokens=not chat, return_offsets_mapping=True)
    except NotImplementedError:
        raise InputError("pooling assistant_mean needs a fast tokenizer (one that reports character offsets); "
                         "this model's is not") from None
    offsets = enc["offset_mapping"]
    spans: list[tuple[int, int]] = []
    for a, b in chars:
        inside = [t for t, (s, e) in enumerate(offsets) if e > a and s < b]
        if not inside:
            raise InputError(f"{record.source}: no token of an assistant turn could be located (the tokenizer "
                             "reports no character offsets for it)")
        spans.append((inside[0], inside[-1] + 1))
    return list(enc["input_ids"]), spans


def encode(tokenizer: PreTrainedTokenizerBase, record: PromptLike, chat: bool, max_length: int, on_long: str = "truncate",
           assistant: bool = False) -> Encoded:
    """Encode one record; prompts longer than ``max_length`` keep their last tokens (the end is
    what ``last`` pooling reads and what a chat template's generation prompt sits in) or fail.
    ``assistant``: also find the token spans of its assistant turns (``assistant_mean`` pooling)."""
    if assistant:
        ids, spans = render_with_assistant(tokenizer, record, chat)
    else:
        ids, spans = render_ids(tokenizer, record.text, record.messages, chat), None
    cut = max(0, len(ids) - max_length)
    if cut:
        if on_long == "fail":
            raise PromptTooLong(f"{record.source}: prompt has {len(ids)} tokens, the model takes {max_length} "
                                "(use --on-long truncate to keep its last tokens, or shorten it)")
        ids = ids[cut:]
        if spans is not None:
            spans = [(max(a - cut, 0), b - cut) for a, b in spans if b > cut]
            if not spans:
                raise PromptTooLong(f"{record.source}: cutting it to the model's {max_length} tokens leaves none "
                                    "of its assistant turns; shorten it or raise --max-length")
    return Encoded(record.prompt_id, ids, cut, record.source, spans)
