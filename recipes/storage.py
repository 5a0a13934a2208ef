"""Local paths and fsspec URLs (gs://, s3://, memory://) behind one small API.

A run directory may be remote. The recipe then works in a local staging directory and
uploads finished files, so every writer (torch.save, save_pretrained, TensorBoard,
matplotlib) only ever sees local paths.

gs:// (gcsfs) is set up once, when this module is imported, for every gs:// access of the
process (ours, and fsspec.open/url_to_fs anywhere else):

- Credentials come only from Application Default Credentials (google.auth.default:
  GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, the metadata server,
  i.e. GKE Workload Identity / the VM's service account). gcsfs's own fallbacks (its ~/.gcs_tokens
  cache, anonymous access) and tokens in FSSPEC_GS_TOKEN/FSSPEC_GCS_TOKEN are not used: the
  recipes take no credential from their config or command line, so none can reach a log.
- With STORAGE_EMULATOR_HOST set (a local GCS emulator), access is anonymous and goes through
  gcsfs's JSON/HTTP filesystem: emulators have no gRPC Storage Control API, and gcsfs's
  zonal/HNS filesystem would probe it for every bucket on nearly every call ("Could not determine
  bucket type", each probe retried for up to 60 s).
- Against real GCS, gcsfs's default filesystem (zonal and hierarchical-namespace buckets
  included) asks each bucket's layout once per process; gcsfs itself asks again on every call
  while the answer is unknown (no storage.objects.list permission, gRPC blocked), each time with
  a warning and up to 60 s of retries.
"""

import contextlib
import fcntl
import hashlib
import importlib
import json
import lzma
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Dict, Iterator, Optional

import fsspec

from recipes.errors import RecipeError

try:
    from google.auth.exceptions import DefaultCredentialsError
except ImportError:  # no [gcs] extra: gs:// fails earlier, on importing gcsfs

    class DefaultCredentialsError(Exception):
        pass


CACHE = Path(os.environ.get("TEXT_RECIPES_CACHE", Path.home() / ".cache" / "text-recipes"))

GCS_EXTRA = "gcsfs is needed for gs:// URLs (pip install -e '.[gcs]')"
NO_CREDENTIALS = (
    "no Google Cloud credentials (Application Default Credentials): use Workload Identity on GKE, "
    "set GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`"
)


def gcs_emulator() -> str:
    """The GCS emulator's address from STORAGE_EMULATOR_HOST (as gcsfs and google-cloud-storage read it); "" for
    real GCS."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    return "" if host in ("", "default") else host


def _gcs_filesystem_class():
    """gcsfs's default filesystem, asking each bucket's layout once per filesystem (fsspec keeps one per process)."""
    import gcsfs

    # ExtendedGcsFileSystem (zonal/HNS buckets) unless GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
    base = gcsfs.GCSFileSystem
    if not hasattr(base, "_get_bucket_type"):
        return type("GCSFileSystem", (base,), {"__module__": __name__})

    async def _get_bucket_type(self, bucket):
        kind = await base._get_bucket_type(self, bucket)
        # gcsfs keeps an unknown layout out of its cache, to ask again on the next call; keep it: the call
        # just failed after its retries, and gcsfs reads such a bucket through the JSON API, as for a flat one
        getattr(self, "_storage_layout_cache", {}).setdefault(bucket, kind)
        return kind

    return type(
        "GCSFileSystem",
        (base,),
        {"__module__": __name__, "__doc__": base.__doc__, "_get_bucket_type": _get_bucket_type},
    )


def __getattr__(name: str):
    # built on first use: importing gcsfs takes half a second, and only gs:// needs it
    if name == "GCSFileSystem":
        cls = globals()["GCSFileSystem"] = _gcs_filesystem_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def configure_gcs() -> None:
    """Route gs:// and gcs:// to the filesystem and credentials described in the module docstring."""
    if gcs_emulator():
        cls, token = "gcsfs.core.GCSFileSystem", "anon"
    else:
        cls, token = f"{__name__}.GCSFileSystem", "google_default"
    for protocol in ("gs", "gcs"):
        if protocol in fsspec.registry:  # gs:// was used before this module was imported: replace the loaded class
            module, _, name = cls.rpartition(".")
            fsspec.register_implementation(protocol, getattr(importlib.import_module(module), name), clobber=True)
        else:
            fsspec.register_implementation(protocol, cls, clobber=True, errtxt=GCS_EXTRA)
        fsspec.config.conf.setdefault(protocol, {})["token"] = token


configure_gcs()


def filesystem(url: str):
    """(filesystem, path) of a URL or local path; missing credentials are a one-line error."""
    try:
        return fsspec.core.url_to_fs(url)
    except DefaultCredentialsError:
        raise RecipeError(f"{url}: {NO_CREDENTIALS}") from None


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts]) if is_remote(base) else str(Path(base, *parts))


def parent(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[0] if is_remote(path) else str(Path(path).parent)


def check_url(url: str, key: str) -> None:
    """A remote URL whose filesystem fsspec knows and can load (gs:// needs gcsfs)."""
    try:
        fsspec.core.url_to_fs(url)
    except ValueError as e:  # "Protocol not known: foo"
        raise RecipeError(f"{key}={url}: {e}; use a local path or an fsspec URL such as gs://bucket/dir") from None
    except ImportError as e:
        if str(e) == GCS_EXTRA:
            raise RecipeError(f"{key}={url}: {e}") from None
        raise RecipeError(
            f"{key}={url}: needs {e.name or 'another package'} (pip install -e '.[gcs]' for gs://)"
        ) from None
    except DefaultCredentialsError:
        raise RecipeError(f"{key}={url}: {NO_CREDENTIALS}") from None


def exists(path: str) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    fs, p = filesystem(path)
    return fs.exists(p)


@contextlib.contextmanager
def reading(source: str) -> Iterator[None]:
    """Opening or reading `source` fails with one line that says why."""
    try:
        yield
    except FileNotFoundError:
        raise RecipeError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{source}: is a directory; expected a data file") from None
    except PermissionError:
        raise RecipeError(f"{source}: permission denied") from None
    except ImportError as e:
        if str(e) == GCS_EXTRA:
            raise RecipeError(f"{source}: {e}") from None
        raise RecipeError(
            f"{source}: {e.name or 'a package'} is needed to read it (pip install -e '.[gcs]' for gs://)"
        ) from None
    except DefaultCredentialsError:
        raise RecipeError(f"{source}: {NO_CREDENTIALS}") from None
    except ValueError as e:  # fsspec: "Protocol not known: foo"
        raise RecipeError(
            f"{source}: cannot open ({e}); use a local path or an fsspec URL such as gs://bucket/file"
        ) from None
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:  # not gzip/xz/..., truncated archive
        raise RecipeError(
            f"{source}: cannot read ({str(e) or type(e).__name__}); is it really what its extension says?"
        ) from None


def read_bytes(path: str) -> bytes:
    with fsspec.open(path, "rb", compression="infer") as f:
        return f.read()


def staging_dir(url: str) -> Path:
    """A local directory that stands in for the remote directory `url`."""
    d = CACHE / "staging" / hashlib.sha1(url.encode()).hexdigest()[:16]
    d.mkdir(parents=True, exist_ok=True)
    return d


def upload(local: Path, url: str) -> None:
    """Copy a file or directory to `url`.

    Object stores create each object atomically, so no file is ever seen half-written. In a
    directory config.json goes last: a model directory is not loadable until it is complete.
    """
    fs, path = filesystem(url)
    if local.is_file():
        fs.put_file(str(local), path)
        return
    for f in sorted((f for f in local.rglob("*") if f.is_file()), key=lambda f: f.name == "config.json"):
        fs.put_file(str(f), f"{path}/{f.relative_to(local).as_posix()}")


def download(url: str, local: Path) -> Path:
    fs, p = filesystem(url)
    fs.get(p, str(local), recursive=fs.isdir(p))
    return local


# what tells one version of an object from another: GCS generation, else a content hash or ETag
VERSION_FIELDS = ("generation", "md5Hash", "ETag", "etag", "VersionId")


def _remote_versions(url: str) -> Optional[Dict[str, list]]:
    """{file: [size, version]} under the remote directory `url`; None where it is missing or shows no versions."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except (FileNotFoundError, NotImplementedError):
        return None
    versions = {}
    for path, info in found.items():
        version = next((str(info[k]) for k in VERSION_FIELDS if info.get(k)), None)
        if version is None:
            return None
        versions[path[len(root) :].lstrip("/")] = [info.get("size"), version]
    return versions or None


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MODEL_CACHES = ("onnx",)  # what inference adds to a model directory (recipes/onnx_engine.py): not the model


def model_sha256(directory: str) -> str:
    """Content hash of a model directory, its caches left out: a retrained model at the same path is another
    model."""
    walk = []
    for root, dirs, names in os.walk(directory):
        if root == directory:
            dirs[:] = [d for d in dirs if d not in MODEL_CACHES]
        walk.append((root, names))
    h = hashlib.sha256()
    for root, names in sorted(walk):
        for name in sorted(names):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, directory).encode() + b"\0")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def local_model_dir(name_or_path: str) -> str:
    """Remote model directories are copied to the local cache, anew when a run has replaced the model
    since (object versions differ) or the store shows no versions; anything else is returned as is.
    A training run reads its base model three times (tokenizer, config, weights): one download."""
    if not is_remote(name_or_path):
        return name_or_path
    dest = CACHE / "models" / hashlib.sha1(name_or_path.encode()).hexdigest()[:16]
    stamp = dest.with_name(dest.name + ".versions.json")  # beside, not in, the model: infer digests the directory
    dest.parent.mkdir(parents=True, exist_ok=True)
    # one process at a time (the ranks of a node start together): the others then find the copy complete
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        versions = _remote_versions(name_or_path)
        if versions is not None and dest.is_dir() and stamp.is_file():
            with contextlib.suppress(OSError, ValueError):
                if json.loads(stamp.read_text()) == versions:
                    return str(dest)
        stamp.unlink(missing_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent))
        try:
            download(name_or_path.rstrip("/") + "/", tmp)
            replace_dir(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if versions is not None:  # listed before the download: a model replaced meanwhile is fetched again next time
            stamp.write_text(json.dumps(versions, sort_keys=True))
    return str(dest)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing what was there."""
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
