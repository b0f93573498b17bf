"""The files `fedmirasol he-keys` writes: the sites' (parameters, key id, secret key) and the
server's (parameters and key id only), safetensors with the parameters in the metadata."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_bytes

from fedmirasol.errors import ConfigError
from fedmirasol.he import seal_io
from fedmirasol.he.ckks import ServerContext, SiteContext, new_site_context
from fedmirasol.he.errors import SecretKeyOnServer, WrongContext
from fedmirasol.he.params import CkksParameters, seal

FORMAT = "fedmirasol-ckks/1"
SECRET_TENSOR = "secret-key"
SITE_FILE, SERVER_FILE = "he-site.ckks", "he-server.ckks"
SIMULATION_KEYS_DIR = "he-keys"  # a simulation's key pair, in its run directory


def _metadata(kind: str, context: ServerContext) -> dict[str, str]:
    return {"format": FORMAT, "kind": kind, "key-id": context.key_id,
            **context.params.metadata()}


def _write_new(path: Path, data: bytes, private: bool, force: bool) -> Path:
    """`data` to a new file (mode 0600 from its creation when `private`); an existing one
    is a FileExistsError unless `force`, which replaces it."""
    if force:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def write_key_pair(directory: str | Path, params: CkksParameters, force: bool = False
                   ) -> tuple[Path, Path]:
    """A fresh key: the sites' file (parameters, key id, secret key; mode 0600) and the
    server's (parameters and key id only) in `directory`. Existing files are a
    FileExistsError unless `force` (a new key locks out sites set up with the old one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    site_path, server_path = directory / SITE_FILE, directory / SERVER_FILE
    existing = [str(p) for p in (site_path, server_path) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (sites set up "
                              "with that key could no longer decrypt; use --force)")
    site = new_site_context(params)
    secret = np.frombuffer(seal_io.save(site._secret), np.uint8)
    _write_new(site_path, safetensors_bytes({SECRET_TENSOR: secret},
                                            metadata=_metadata("site", site)), True, force)
    _write_new(server_path, safetensors_bytes({}, metadata=_metadata("server", site)), False,
               force)
    return site_path, server_path


def _read(path: str | Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CKKS context file {path}")
    try:
        with safe_open(str(path), "np") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types
        raise ConfigError(f"{path} is not a CKKS context file of `fedmirasol he-keys` "
                          f"({error})") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a CKKS context file of `fedmirasol he-keys` (format "
                          f"{meta.get('format')!r}, expected {FORMAT!r})")
    return meta, tensors


def load_server(path: str | Path) -> ServerContext:
    """The server's context from its file; a file holding a secret key is refused."""
    meta, tensors = _read(path)
    if meta.get("kind") != "server" or tensors:
        raise SecretKeyOnServer(f"{path} holds a site's secret key: give the server only the "
                                "server context file of `fedmirasol he-keys` (he-server.ckks)")
    return ServerContext(CkksParameters.from_metadata(meta), meta["key-id"])


def load_site(path: str | Path) -> SiteContext:
    """A site's context from its file."""
    meta, tensors = _read(path)
    if meta.get("kind") != "site" or SECRET_TENSOR not in tensors:
        raise WrongContext(f"{path} holds no secret key: a site needs the site context file "
                           "of `fedmirasol he-keys` (he-site.ckks), not the server's")
    params = CkksParameters.from_metadata(meta)
    key = seal_io.load(seal.SecretKey(), params.context(), tensors[SECRET_TENSOR].tobytes())
    return SiteContext(params, meta["key-id"], key)


@functools.lru_cache(maxsize=4)
def cached_site(path: str) -> SiteContext:
    """`load_site(path)`, once per process."""
    return load_site(path)
