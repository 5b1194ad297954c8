"""A weights file, opened once: its version hashed from the bytes loaded, its tensors read from it."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import torch

from ._errors import ModelLoadError
from ._extras import raise_missing_extra

__all__ = ["WeightsFile", "WeightsOutside", "read_weights"]

SAFETENSORS_SUFFIXES = (".safetensors",)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")


class WeightsFile:
    """A weights file opened once: its version hashed from the bytes loaded, loaded from that file.

    Opening the path once and loading from the open file means a path swapped meanwhile (a
    symlink, a rename) cannot make the load read other bytes than those hashed, nor other than
    those checked by `within`: the directory the opened file must be in (its real path, read
    from the open file).
    """

    def __init__(self, path: Path, *, within: Path | None = None) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ModelLoadError(
                f"weights file {path} does not exist (working directory {Path.cwd()}): "
                "check the path, or train and save the weights first"
            ) from None
        except OSError as exc:
            raise ModelLoadError(f"weights file {path} cannot be opened: {exc.strerror or exc}") from None
        try:
            info = os.fstat(self._fd)
            if not stat.S_ISREG(info.st_mode):
                raise ModelLoadError(f"weights path {path} is not a regular file")
            self.size = info.st_size
            self.real_path = self._opened_path()
            if within is not None and not self.real_path.is_relative_to(within):
                raise WeightsOutside(within)
        except BaseException:
            os.close(self._fd)
            raise

    def _opened_path(self) -> Path:
        link = f"/proc/self/fd/{self._fd}"
        try:
            return Path(os.readlink(link))
        except OSError:  # no /proc (macOS): the path as resolved now
            return Path(os.path.realpath(self.path))

    @property
    def load_path(self) -> str:
        """A path that opens this very file (`/proc/self/fd/N` on Linux)."""
        link = f"/proc/self/fd/{self._fd}"
        return link if os.path.exists(link) else str(self.path)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(self._fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def close(self) -> None:
        os.close(self._fd)


class WeightsOutside(ModelLoadError):
    """The weights file opened is not in the directory it must be in (the admin route's 403)."""

    status = 403  # the reload's answer

    def __init__(self, root: Path) -> None:
        self.root = root
        super().__init__(
            f"the weights path is outside the model's weights directory ({root}); put the file there"
        )


def read_weights(opened: WeightsFile) -> dict[str, torch.Tensor]:
    path = opened.path
    suffix = path.suffix.lower()
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            try:
                from safetensors.torch import load_file
            except ImportError as error:
                raise_missing_extra(error, "safetensors", extra="torch", needed_by=f"reading {path}")

            return load_file(opened.load_path, device="cpu")
        if suffix in STATE_DICT_SUFFIXES:
            state = torch.load(opened.load_path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(state, dict):
                raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict")
            return state
    except (ModelLoadError, ImportError):
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"reading weights {path} failed: {type(exc).__name__}: {exc}\n"
            "(state dicts are read with weights_only=True: files with pickled code are refused)"
        ) from None
    raise ModelLoadError(
        f"weights file {path} has suffix {suffix!r}; use .safetensors or a state dict in .pt/.pth/.bin"
    )
