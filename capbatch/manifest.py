"""Bundle manifest reading and file-hash verification (torch-free).

Shared by the exporter (which writes the hashes) and the runtime loader (which
checks them before creating any session), so there is one implementation of
"is this bundle intact".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import BundleError

FORMAT = "capbatch-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks so large graphs do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle_dir: Path | str) -> dict:
    """Parse and sanity-check `manifest.json`; every problem is one BundleError line."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_FILE
    if not bundle_dir.is_dir():
        raise BundleError(f"model bundle not found: {bundle_dir} is not a directory")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a model bundle: no {MANIFEST_FILE}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a capbatch bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format_version {version!r}; this capbatch reads {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path} lists no files")
    return manifest


def verify_files(bundle_dir: Path | str, manifest: dict) -> None:
    """Check every file the manifest lists against its sha256.

    Raises one BundleError naming every missing or altered file.
    """
    bundle_dir = Path(bundle_dir)
    problems = []
    for name, expected in sorted(manifest["files"].items()):
        # Names are plain file names inside the bundle; anything else is refused
        # so a manifest cannot point the loader outside its directory.
        if Path(name).name != name:
            problems.append(f"{name}: not a plain file name")
            continue
        path = bundle_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name}: sha256 mismatch (modified or corrupt)")
    if problems:
        raise BundleError(f"bundle {bundle_dir} failed verification: " + "; ".join(problems))


def verify_bundle(bundle_dir: Path | str) -> dict:
    """read_manifest + verify_files: the manifest of an intact bundle."""
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest)
    return manifest
