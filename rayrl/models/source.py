"""ModelSource: a model folder every actor can open, whatever node of the cluster it runs on.

The driver names a model by a local folder (the base model it built or cached), a storage URI (a
checkpoint under ``s3://...``) or a Hugging Face id. An actor calls :meth:`ModelSource.local_dir` and
gets a folder on its own node for ``from_pretrained``:

- a local folder: the folder itself on the driver's node; on other nodes, a copy made from the folder's
  files, which the driver put into the object store once (only on a multi-node cluster);
- a URI: a copy downloaded once per node (and content), each file checked against the checkpoint's
  recorded sizes and sha256 sums when it has them;
- a Hugging Face id: the id, which ``from_pretrained`` downloads on each node.

Copies live under ``<cache>/models/<digest>`` (``$RAYRL_CACHE_DIR``, else ``~/.cache/rayrl``), written under
a temporary name and renamed, so actors on one node share one copy and never read a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrl.storage.location import download_files, is_uri, listing, open_location, read_bytes

MODEL_INFO_FILE = "training_info.json"  # a rayrl checkpoint's: lists its files with size and sha256


@dataclass(frozen=True)
class ModelSource:
    path: str  # local folder on the driver's node, a storage URI, or a Hugging Face id
    node_id: str | None = None  # the node whose filesystem holds ``path`` (a local folder)
    files: Any = None  # ObjectRef of {relative path: bytes}: the folder for nodes that cannot see it
    manifest: dict[str, dict[str, Any]] | None = None  # a URI's files: relative path -> size, sha256
    digest: str = ""  # identifies the content: the name of a node's copy

    def __str__(self) -> str:
        return self.path

    def local_dir(self) -> str:
        """A folder (or hub id) on this node holding the model; copies it here first when needed."""
        if is_uri(self.path):
            return materialize(self.digest, lambda folder: fetch_uri(self.path, self.manifest, folder))
        if self.files is None or Path(self.path).is_dir() and this_node() == self.node_id:
            return self.path
        import ray

        return materialize(self.digest, lambda folder: write_files(ray.get(self.files), folder))


def local_model_dir(model: ModelSource | str) -> str:
    """A folder (or hub id) on this node for ``model``: a ModelSource, or a path usable as it is."""
    return model.local_dir() if isinstance(model, ModelSource) else str(model)


def model_source(path: str, ship: bool = False) -> ModelSource:
    """The driver's description of ``path`` for its actors. ``ship``: the cluster has more than one node,
    so a local folder's files go into the object store for the nodes that cannot see it."""
    path = str(path)
    if is_uri(path):
        loc = open_location(path)
        manifest = None
        info = loc.child(MODEL_INFO_FILE)
        try:
            manifest = json.loads(read_bytes(info).decode()).get("files") or None
        except (OSError, ValueError):
            manifest = None
        content = manifest or listing(loc)
        return ModelSource(path, manifest=manifest, digest=_digest(path, content))
    folder = Path(path)
    if not folder.is_dir() or not ship:
        return ModelSource(path)
    import ray

    files = read_files(folder)
    content = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    return ModelSource(path, node_id=this_node(), files=ray.put(files), digest=_digest(str(folder.resolve()), content))


def this_node() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def cluster_nodes() -> int:
    """Alive nodes of the connected cluster (1 without Ray)."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) if ray.is_initialized() else 1


# ---- copies on a node ----------------------------------------------------------------------------
def models_cache() -> Path:
    root = os.environ.get("RAYRL_CACHE_DIR") or Path.home() / ".cache" / "rayrl"
    return Path(root).expanduser() / "models"


def materialize(digest: str, fill) -> str:
    """``<cache>/models/<digest>``, filled by ``fill(folder)`` under a temporary name the first time."""
    final = models_cache() / digest
    if final.is_dir():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=final.parent))
    try:
        fill(staging)
        staging.rename(final)
    except OSError:
        if not final.is_dir():  # not a lost race with another actor of this node: a real failure
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(final)


def fetch_uri(uri: str, manifest: dict[str, dict[str, Any]] | None, folder: Path) -> None:
    """Download the model folder at ``uri`` into ``folder`` (checked against ``manifest`` when given)."""
    source = open_location(uri)
    if manifest is None:  # a plain model folder: nothing recorded to check against
        write_files({name: read_bytes(source.child(name)) for name in listing(source)}, folder)
        return
    download_files(source, manifest, folder)
    (folder / MODEL_INFO_FILE).write_bytes(read_bytes(source.child(MODEL_INFO_FILE)))


def read_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_files(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _digest(where: str, content: Any) -> str:
    text = json.dumps({"where": where, "content": content}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
