"""The examples' `compile` setting (`IRIS_COMPILE`, `EMBED_COMPILE`) as `TorchModel(compile=...)` takes it."""

from __future__ import annotations

from typing import Any, Literal

# "default" is torch.compile's default mode; "reduce-overhead" also captures CUDA graphs on a GPU.
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def compile_setting(mode: CompileMode) -> bool | dict[str, Any]:
    return False if mode == "off" else True if mode == "default" else {"mode": mode}
