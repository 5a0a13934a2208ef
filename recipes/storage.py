"""Local paths and fsspec URLs (gs://, s3://, memory://) behind one small API.

A run directory may be remote. The recipe then works in a local staging directory and
uploads finished files, so every writer (torch.save, save_pretrained, TensorBoard,
matplotlib) only ever sees local paths.
"""
import contextlib
import hashlib
import lzma
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

import fsspec

from recipes.errors import RecipeError

CACHE = Path(os.environ.get("TEXT_RECIPES_CACHE", Path.home() / ".cache" / "text-recipes"))


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
        raise RecipeError(f"{key}={url}: needs {e.name or 'another package'} (pip install -e '.[gcs]' for gs://)") from None


def exists(path: str) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    fs, p = fsspec.core.url_to_fs(path)
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
        raise RecipeError(f"{source}: {e.name or 'a package'} is needed to read it (pip install -e '.[gcs]' for gs://)") from None
    except ValueError as e:  # fsspec: "Protocol not known: foo"
        raise RecipeError(f"{source}: cannot open ({e}); use a local path or an fsspec URL such as gs://bucket/file") from None
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:  # not gzip/xz/..., truncated archive
        raise RecipeError(f"{source}: cannot read ({str(e) or type(e).__name__}); is it really what its extension says?") from None


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
    fs, path = fsspec.core.url_to_fs(url)
    if local.is_file():
        fs.put_file(str(local), path)
        return
    for f in sorted((f for f in local.rglob("*") if f.is_file()), key=lambda f: f.name == "config.json"):
        fs.put_file(str(f), f"{path}/{f.relative_to(local).as_posix()}")


def download(url: str, local: Path) -> Path:
    fs, p = fsspec.core.url_to_fs(url)
    fs.get(p, str(local), recursive=fs.isdir(p))
    return local


def local_model_dir(name_or_path: str) -> str:
    """Remote model directories are copied to the local cache (afresh: a run may have replaced
    the model since); anything else is returned as is."""
    if not is_remote(name_or_path):
        return name_or_path
    dest = CACHE / "models" / hashlib.sha1(name_or_path.encode()).hexdigest()[:16]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent))
    download(name_or_path.rstrip("/") + "/", tmp)
    replace_dir(tmp, dest)
    return str(dest)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing what was there."""
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
