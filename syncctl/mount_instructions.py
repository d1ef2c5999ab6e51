"""How to mount a served store on macOS, Windows and Linux, as text for the terminal.

``syncctl demo`` prints this once the server listens, with the URL it really listens on (the port may have
been picked by the kernel). Every line that names the server names ``url`` itself (or its ``dav://`` form
for GNOME), so a reader can copy any of them as it is. Only clients that need nothing but the URL are
listed: the demo has no accounts, so Windows' refusal of Basic auth over plain http does not apply.
"""

from __future__ import annotations

from urllib.parse import urlsplit

#: Width of the operating-system column.
_COLUMN = 9


def gio_url(url: str) -> str:
    """The GNOME (gvfs) form of a WebDAV URL: ``dav://`` for http, ``davs://`` for https.

    Args:
        url: ``http://host:port`` or ``https://…``.

    Returns:
        The same location with the gvfs scheme.
    """
    parts = urlsplit(url)
    scheme = "davs" if parts.scheme == "https" else "dav"
    return parts._replace(scheme=scheme).geturl()


def mount_instructions(url: str, *, watch: str, folder: str = "sync-demo") -> str:
    """Mount commands for the store served at ``url`` and a ``curl`` line that shows ``watch`` changing.

    Args:
        url: The mount URL without a trailing slash (``http://127.0.0.1:4918``).
        watch: A file name in the store to fetch with curl (``readings.csv``).
        folder: The mount point name suggested for the clients that need one.

    Returns:
        Lines ending in a newline.
    """
    root = url.rstrip("/") + "/"
    rows = [
        ("macOS", f"Finder > Go > Connect to Server... (Cmd-K), server address {root}"),
        ("", f"or: mkdir -p ~/{folder} && mount_webdav {root} ~/{folder}"),
        ("Windows", f"net use Z: {root}"),
        ("", f'or Explorer > This PC > "Map network drive...", folder {root}'),
        ("", "(uses the WebClient service; start it with `net start webclient` if it is stopped)"),
        ("Linux", f"gio mount {gio_url(root)}    (GNOME Files lists it under Other Locations)"),
        ("", f"or: sudo mount -t davfs -o ro {root} /mnt/{folder}    (davfs2; press Enter at the prompts)"),
        ("", f"or: rclone mount :webdav: ~/{folder} --webdav-url {root} --read-only"),
    ]
    lines = [f"mount {root} (read-only):"]
    lines += [f"  {system:<{_COLUMN}}{text}" for system, text in rows]
    lines += [
        f"watch {watch} change (run it again a few seconds later: new rows, new ETag):",
        f"  curl -i {root}{watch}",
    ]
    return "\n".join(lines) + "\n"
