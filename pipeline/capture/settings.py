"""Capture settings (``IngestConfig``) and their checks, torch-free: the CLI and the workflow
runner validate them, and may answer a rerun from its receipt, before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass, field

from traitlens.store.errors import InputError
from traitlens.store.vocabulary import DEFAULT_POOLINGS, NAMED_SITES, POOLINGS

from traitlens.pipeline.model.options import LoadOptions


@dataclass
class IngestConfig:
    """Capture settings; the CLI's options map one to one."""

    model: str | None = None  # None: the default model
    sites: list[str] = field(default_factory=lambda: ["resid"])
    layers: str = "all"
    poolings: list[str] = field(default_factory=lambda: list(DEFAULT_POOLINGS))
    chat: bool | None = None  # None: chat when the tokenizer has a template
    generate: int = 0  # tokens to generate per prompt (response_mean)
    batch_size: int = 32
    max_tokens: int | str = 16384  # padded tokens per batch, or "auto" (from free memory once the model is loaded)
    padding_side: str = "right"
    on_long: str = "truncate"  # truncate | fail
    max_length: int | None = None  # None: the model's context
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None  # "auto" (accelerate spreads the blocks over the devices), balanced, sequential
    max_memory: str | dict | None = None  # per device for the device map: "0=20GiB,cpu=64GiB" (implies device_map auto)
    load_in: str | None = None  # "4bit" | "8bit": bitsandbytes quantisation (the extra [gpu]); part of the model key
    chunk_rows: int = 256
    window: int = 4096  # prompts tokenised and length-sorted at a time
    commit_seconds: float = 60.0
    workers_write: bool = True  # with a Dask cluster: workers write their own chunks (False: the driver writes)
    writer_thread: bool = True  # commit batch k on a thread while batch k+1 runs (False: in turn; same rows)

    def validate(self) -> "IngestConfig":
        """Check every setting before anything is loaded or written; de-duplicates the site and
        pooling lists (a repeated pooling would commit every row twice). Raises
        :class:`InputError` (a ``ValueError``) naming the option and what it accepts."""
        def positive(name, value, zero_ok=False):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < (0 if zero_ok else 1):
                raise InputError(f"--{name.replace('_', '-')} {value!r}: must be "
                                 + ("0 or more" if zero_ok else "a positive number"))

        if self.model is not None and not str(self.model).strip():
            raise InputError("--model '': give a Hugging Face id or a local model folder, or leave --model out for "
                             "the default model")
        self.sites = list(dict.fromkeys(s.strip() for s in self.sites if str(s).strip()))
        if not self.sites:
            raise InputError(f"--site: give at least one site ({', '.join(NAMED_SITES)} or a dotted module path)")
        self.poolings = list(dict.fromkeys(p.strip() for p in self.poolings if str(p).strip()))
        if not self.poolings:
            raise InputError(f"--pooling: give at least one of {', '.join(POOLINGS)}")
        bad = [p for p in self.poolings if p not in POOLINGS]
        if bad:
            raise InputError(f"--pooling {','.join(bad)}: unknown; use a comma list of {', '.join(POOLINGS)}")
        if isinstance(self.layers, str) and not self.layers.strip():
            raise InputError("--layers '': give layers (all, 0-15, 3,7,11 or -1)")
        if isinstance(self.max_tokens, str) and self.max_tokens.strip().lower() == "auto":
            self.max_tokens = "auto"
        elif isinstance(self.max_tokens, str) and self.max_tokens.strip().isdigit():
            self.max_tokens = int(self.max_tokens)
        elif isinstance(self.max_tokens, str):
            raise InputError(f"--max-tokens {self.max_tokens!r}: give a number of padded tokens per batch, or auto")
        for name in ("batch_size", "chunk_rows", "window") + (("max_tokens",) if self.max_tokens != "auto" else ()):
            positive(name, getattr(self, name))
        positive("generate", self.generate, zero_ok=True)
        positive("commit_seconds", self.commit_seconds)
        if self.max_length is not None:
            positive("max_length", self.max_length)
            if self.max_length <= self.generate:
                raise InputError(f"--max-length {self.max_length} leaves no room for the prompt after "
                                 f"--generate {self.generate}")
        if "response_mean" in self.poolings and self.generate <= 0:
            raise InputError("--pooling response_mean needs --generate N (tokens to generate per prompt)")
        if self.padding_side not in ("right", "left"):
            raise InputError(f"--padding-side {self.padding_side!r}: use right or left")
        if self.on_long not in ("truncate", "fail"):
            raise InputError(f"--on-long {self.on_long!r}: use truncate or fail")
        load = self.load_options()  # --device, --dtype, --device-map, --max-memory, --load-in
        self.device_map, self.max_memory = load.device_map, load.max_memory
        return self

    def load_options(self) -> LoadOptions:
        """How the model is loaded (checked: an :class:`InputError` names a bad option)."""
        return LoadOptions(self.device, self.dtype, self.device_map, self.max_memory, self.load_in).checked()

    def load_kwargs(self) -> dict:
        """The keyword arguments of :func:`~traitlens.pipeline.model.loading.load_model` for these settings."""
        o = self.load_options()
        return {"device": o.device, "dtype": o.dtype, "device_map": o.device_map, "max_memory": o.max_memory,
                "load_in": o.load_in}
