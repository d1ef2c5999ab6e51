"""``syncctl guest new``: write a working guest template for one language into a directory.

Templates ship in the wheel (``syncctl/sdk/templates``): per language a source that fetches the URL named
``url`` in ``context.json`` and writes the body as the payload, plus a shared ``context.json``,
``fixtures.json`` (so ``syncctl guest test`` works at once) and a README with the build command. Existing
files are never overwritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sync_format.errors import SyncError
from syncctl.guest_build import SDK_DIR

TEMPLATES = SDK_DIR / "templates"
#: Per language: display name, the source an author edits, what to pass to ``guest build``, the SDK.
_LANGUAGES = {
    "c": ("C", "guest.c", "guest.c", "sync_guest.h, found by `syncctl guest build`"),
    "zig": ("Zig", "guest.zig", "guest.zig", '`@import("sync_guest")`, linked by `syncctl guest build`'),
    "rust": ("Rust", "src/lib.rs", ".", "the `sync_guest` crate, linked by `syncctl guest build`"),
    "assemblyscript": (
        "AssemblyScript",
        "guest.ts",
        "guest.ts",
        '`import * as sg from "sync_guest"`, found by `syncctl guest build`',
    ),
}


class TemplateError(SyncError):
    """The template cannot be written (the directory holds files already)."""

    code = "template_error"


def write_template(directory: Path, language: str) -> list[Path]:
    """Write the template for ``language`` into ``directory`` (created; must be new or empty).

    Args:
        directory: Destination.
        language: One of ``c``, ``zig``, ``rust``, ``assemblyscript``.

    Returns:
        The files written.

    Raises:
        TemplateError: The directory exists and is not empty, or the language is unknown.
    """
    if language not in _LANGUAGES:
        raise TemplateError(f"no template for {language!r}")
    if directory.exists() and any(directory.iterdir()):
        raise TemplateError(f"{directory} is not empty: choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    source_dir = TEMPLATES / language
    for src in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        dest = directory / src.relative_to(source_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        written.append(dest)
    for name in ("context.json", "fixtures.json"):
        shutil.copyfile(TEMPLATES / "common" / name, directory / name)
        written.append(directory / name)
    display, source, build_src, sdk = _LANGUAGES[language]
    readme = (TEMPLATES / "common" / "README.md").read_text(encoding="utf-8")
    (directory / "README.md").write_text(
        readme.format(name=directory.name, language=display, source=source, build_src=build_src, sdk=sdk),
        encoding="utf-8",
    )
    written.append(directory / "README.md")
    return written
