"""Build the workload images offline: a Debian base with Python, then the workloads on top.

An edge site has no registry to pull from, so the images are built locally from Debian packages:

* `build_base_image()` runs `debootstrap --variant=minbase` with `python3-minimal` and
  `libpython3.11-stdlib` (the minimal interpreter lacks `json`, `http.server`, `socketserver`,
  `statistics`, ...; the stdlib package adds them for a few MB, less than `python3`), trims
  documentation, locales and apt caches, caches the root filesystem as a tarball under the cache
  directory and `docker import`s it. A second build reuses the tarball (or the image, when it is
  already on the engine and carries the same rootfs label), so it takes seconds instead of ~40 s.
* `build_workload_image()` runs `docker build` (the engine's classic builder) on
  `workloads/Dockerfile`, whose context is the `workloads/` directory alone; the result runs
  `python3 -m workloads.<module>` from `/app`.

Both are offline build steps for operators and tests, never on the request path. Command line:
`python -m tools.runtimes.images [--base-only] [--cache-dir DIR]` builds and prints names and sizes.
Building the base needs root (debootstrap) and the Debian mirror.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from tools.runtimes.base import WorkloadRuntimeError
from tools.runtimes.docker import connect_engine

DEFAULT_BASE_IMAGE = "mec-python-base:bookworm"
DEFAULT_WORKLOAD_IMAGE = "mec-workloads:0.1"
DEFAULT_CACHE_DIR = Path("/var/cache/mec-images")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
BASE_PACKAGES: tuple[str, ...] = ("python3-minimal", "libpython3.11-stdlib")
REQUIRED_MODULES: tuple[str, ...] = (
    "json",
    "http.server",
    "http.client",
    "socketserver",
    "statistics",
    "hashlib",
    "math",
    "threading",
    "signal",
    "argparse",
    "urllib.request",
)
ROOTFS_LABEL = "mec.rootfs"

# Directories whose contents an image that only runs Python never reads.
_EMPTIED_DIRS = ("var/cache/apt", "var/lib/apt/lists", "usr/share/man", "usr/share/info", "usr/share/locale")
_CONTEXT_SKIP = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_REPO_ROOT = Path(__file__).resolve().parents[2]


class ImageBuildError(WorkloadRuntimeError):
    """An image could not be built (missing tool, mirror unreachable, failed build step)."""


@dataclass(frozen=True)
class BuiltImage:
    """An image on the engine and how it got there."""

    name: str
    id: str
    size_bytes: int
    seconds: float
    source: str
    """`present` (already on the engine), `rootfs-cache` (imported from the cached tarball),
    `debootstrap` (built from Debian packages) or `docker-build`."""

    def describe(self) -> str:
        return f"{self.name}\t{self.size_bytes / 1e6:.0f} MB\t{self.id[:19]}\t{self.source}\t{self.seconds:.1f} s"


def rootfs_tarball(
    cache_dir: Path, suite: str = DEFAULT_SUITE, packages: Sequence[str] = BASE_PACKAGES
) -> Path:
    """Where the root filesystem for this suite and package set is cached."""
    digest = hashlib.sha256(f"{suite}|{','.join(sorted(packages))}|trim1".encode()).hexdigest()[:12]
    return cache_dir / f"rootfs-{suite}-minbase-{digest}.tar"


def build_base_image(
    name: str = DEFAULT_BASE_IMAGE,
    rootfs_cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    suite: str = DEFAULT_SUITE,
    packages: Sequence[str] = BASE_PACKAGES,
    mirror: str = DEFAULT_MIRROR,
    force: bool = False,
    docker_url: str | None = None,
) -> BuiltImage:
    """The Python base image, built from Debian packages unless already on the engine. Blocking.

    With `force`, the image is imported again (from the cached tarball if there is one); delete
    the tarball to bootstrap from the mirror again.
    """
    began = time.monotonic()
    tarball = rootfs_tarball(Path(rootfs_cache_dir), suite, packages)
    client = connect_engine(docker_url)
    try:
        if not force:
            existing = _find_image(client, name)
            if existing is not None and (existing.labels or {}).get(ROOTFS_LABEL) == tarball.name:
                return _described(existing, name, began, "present")
        source = "rootfs-cache"
        if not tarball.is_file():
            _bootstrap_rootfs(tarball, suite, packages, mirror)
            source = "debootstrap"
        _import_rootfs(client, tarball, name)
        _check_modules(client, name)
        image = client.images.get(name)
        return _described(image, name, began, source)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"building {name}: {exc}") from exc
    finally:
        client.close()


def build_workload_image(
    name: str = DEFAULT_WORKLOAD_IMAGE,
    base: str = DEFAULT_BASE_IMAGE,
    source_dir: Path = _REPO_ROOT,
    *,
    docker_url: str | None = None,
) -> BuiltImage:
    """`docker build` of `<source_dir>/workloads/Dockerfile` FROM `base`. Blocking.

    Always builds: the engine's layer cache makes an unchanged tree a no-op of a second or so,
    and a changed one is picked up.
    """
    began = time.monotonic()
    context_dir = Path(source_dir) / "workloads"
    if not (context_dir / "Dockerfile").is_file():
        raise ImageBuildError(f"no Dockerfile in {context_dir}")
    client = connect_engine(docker_url)
    try:
        if _find_image(client, base) is None:
            raise ImageBuildError(
                f"base image {base!r} is not on the engine; build it with build_base_image()"
            )
        previous = _find_image(client, name)
        output: list[str] = []
        stream = client.api.build(
            fileobj=_context_tar(context_dir),
            custom_context=True,
            tag=name,
            buildargs={"BASE": base},
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                output.append(str(chunk["stream"]))
            if "error" in chunk:
                tail = "".join(output[-20:])
                raise ImageBuildError(f"docker build of {name} failed: {chunk['error']}\n{tail}")
        image = client.images.get(name)
        if previous is not None and previous.id != image.id:
            # The replaced image would linger untagged; one a container still uses stays.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(previous.id)
        return _described(image, name, began, "docker-build")
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"building {name}: {exc}") from exc
    finally:
        client.close()


# --- steps ----------------------------------------------------------------------------------------


def _find_image(client: docker.DockerClient, name: str) -> docker.models.images.Image | None:
    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def _described(image: docker.models.images.Image, name: str, began: float, source: str) -> BuiltImage:
    return BuiltImage(
        name=name,
        id=str(image.id),
        size_bytes=int(image.attrs.get("Size") or 0),
        seconds=time.monotonic() - began,
        source=source,
    )


def _bootstrap_rootfs(tarball: Path, suite: str, packages: Sequence[str], mirror: str) -> None:
    """debootstrap a minimal root filesystem, trim it and store it as `tarball` (atomically)."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageBuildError("building the base image needs root (debootstrap chroots)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tarball.parent))
    try:
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            suite,
            str(workdir),
            mirror,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise ImageBuildError(f"debootstrap failed (exit {done.returncode}):\n{tail}")
        _trim(workdir)
        partial = tarball.with_suffix(".tar.partial")
        done = subprocess.run(
            ["tar", "--numeric-owner", "-C", str(workdir), "-cf", str(partial), "."],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ImageBuildError(f"tar of the root filesystem failed: {done.stderr.strip()}")
        os.replace(partial, tarball)
    finally:
        _unmount_below(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def _trim(root: Path) -> None:
    """Drop what a Python-only image never reads; keep the packages' copyright files."""
    for relative in _EMPTIED_DIRS:
        directory = root / relative
        if directory.is_dir():
            for child in directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    docs = root / "usr/share/doc"
    if docs.is_dir():
        for path in sorted(docs.rglob("*"), reverse=True):
            if path.name == "copyright" or (path.is_symlink() and path.parent == docs):
                continue
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                path.unlink()


def _unmount_below(root: Path) -> None:
    """Unmount anything a failed debootstrap left mounted inside `root` (/proc, /sys), deepest first."""
    prefix = str(root.resolve()) + "/"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _import_rootfs(client: docker.DockerClient, tarball: Path, name: str) -> None:
    """`docker import` the tarball as `name`; the image it replaces is removed unless still used."""
    previous = _find_image(client, name)
    repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
    client.api.import_image_from_file(
        str(tarball),
        repository=repository,
        tag=tag,
        changes=[
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"LABEL {ROOTFS_LABEL}={tarball.name}",
            'CMD ["python3"]',
        ],
    )
    if previous is not None and previous.id != client.images.get(name).id:
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(previous.id)


def _check_modules(client: docker.DockerClient, image: str) -> None:
    """Import every stdlib module the workloads need, inside the image."""
    code = f"import {', '.join(REQUIRED_MODULES)}"
    try:
        client.containers.run(image, ["python3", "-c", code], remove=True, network_mode="none")
    except docker.errors.ContainerError as exc:
        stderr = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else exc.stderr
        raise ImageBuildError(f"{image} lacks Python modules the workloads need: {stderr}") from exc


def _context_tar(context_dir: Path) -> io.BytesIO:
    """The build context: `context_dir` without bytecode and tool caches."""
    buffer = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(part in _CONTEXT_SKIP for part in parts) or info.name.endswith((".pyc", ".pyo")):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for child in sorted(context_dir.iterdir()):
            archive.add(child, arcname=child.name, filter=keep)
    buffer.seek(0)
    return buffer


# --- command line ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.runtimes.images",
        description="Build the site's Python base image (debootstrap, offline from Debian packages) "
        "and the workload image on top of it.",
    )
    parser.add_argument("--base-only", action="store_true", help="build only the base image")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the rootfs is cached"
    )
    parser.add_argument("--base-name", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--name", default=DEFAULT_WORKLOAD_IMAGE, help="workload image name")
    parser.add_argument(
        "--source-dir", type=Path, default=_REPO_ROOT, help="repository root (holds workloads/)"
    )
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--force-base", action="store_true", help="import the base image again")
    parser.add_argument("--docker-url", default=None)
    args = parser.parse_args(argv)
    try:
        base = build_base_image(
            args.base_name,
            args.cache_dir,
            mirror=args.mirror,
            force=args.force_base,
            docker_url=args.docker_url,
        )
        print(base.describe())
        if not args.base_only:
            print(
                build_workload_image(
                    args.name, base.name, args.source_dir, docker_url=args.docker_url
                ).describe()
            )
    except WorkloadRuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
