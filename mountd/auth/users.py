"""The users file: who may log in to mountd, with which role (spec §6.2), and how passwords are checked.

The file is TOML, UTF-8, written by ``syncctl user`` (``docs/security.md``, "Access control")::

    realm = "sync"                  # optional, default "sync": the realm digest_ha1 values were made for

    [users."alice"]
    role = "owner"                  # "owner" (may write) or "consumer" (read-only)
    password_hash = "$scrypt$ln=15,r=8,p=1$<salt, base64>$<key, base64>"
    digest_ha1 = "<32 hex digits>"  # optional: MD5("alice:sync:<password>"), only for HTTP digest

Invariants:
    * No password is ever stored in plain text. Basic authentication is checked against ``password_hash``,
      a salted scrypt hash (slow on purpose: ~0.17 s and 32 MiB on the reference machine). HTTP digest
      cannot work from such a hash — the server must compute MD5(user:realm:password) itself — so
      ``digest_ha1`` is written only when the operator asks for digest support, and it is
      password-equivalent for this realm: whoever reads it can log in. The file is therefore written with
      mode 0600.
    * A ``UserTable`` is immutable and fully validated when loaded: unknown keys, a bad role, a hash that is
      not ours, or a user name outside ``NAME_PATTERN`` raise ``UsersFileError`` naming the file, the user
      and the line of the user's table. Nothing is loaded partly.
    * User names are ASCII letters, digits and ``._@+-`` (up to 64, starting with a letter or digit): no
      ``:`` (basic authentication splits on it), no quote or comma (they break digest headers), and nothing
      that needs escaping in TOML.
    * ``add_user``/``remove_user`` change the file atomically (temp file in the same directory, fsync,
      rename, fsync of the directory) while holding an exclusive ``flock`` on the directory, so concurrent
      changes are serialised and a reader sees the old file or the new one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mountd.errors import UsersFileError

log = logging.getLogger(__name__)

#: Realm of the 401 challenges and of digest HA1 values when the file names none.
DEFAULT_REALM = "sync"
#: User names: see the module docstring for why the alphabet is this small.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
#: Realm names: the same alphabet plus space; no quote, since the realm is quoted in WWW-Authenticate.
REALM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,63}")
#: log2 of scrypt's cost N for new hashes: 2**15 takes ~0.17 s and 32 MiB here (see docs/security.md).
SCRYPT_LOG_N = 15
#: scrypt block size r for new hashes (the usual 8).
SCRYPT_R = 8
#: scrypt parallelism p for new hashes.
SCRYPT_P = 1
#: Bytes of random salt per hash.
SALT_BYTES = 16
#: Bytes of derived key per hash.
KEY_BYTES = 32
#: Bounds on the scrypt parameters a file may carry: a hand-edited or hostile file must not make every
#: login take minutes or gigabytes.
MAX_LOG_N, MAX_R, MAX_P = 20, 32, 16
#: Mode of users files we write: only the owner may read the hashes.
FILE_MODE = 0o600

_HASH_PATTERN = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_HA1_PATTERN = re.compile(r"[0-9a-f]{32}")
_USER_KEYS = frozenset({"role", "password_hash", "digest_ha1"})
_TOP_KEYS = frozenset({"realm", "users"})
_HEADER = (
    '# mountd users file, written by `syncctl user` (format: docs/security.md, "Access control").\n'
    "# digest_ha1 values are password-equivalent: keep this file private (mode 0600).\n"
)


class Role(enum.Enum):
    """The two roles of spec §6.2: an Owner may write (where the archive allows it), a Consumer only reads."""

    OWNER = "owner"
    CONSUMER = "consumer"


@dataclass(frozen=True)
class PasswordHash:
    """A salted scrypt hash in the form ``$scrypt$ln=…,r=…,p=…$<salt>$<key>`` (base64).

    Attributes:
        log_n: log2 of scrypt's N.
        r: Block size.
        p: Parallelism.
        salt: The random salt.
        key: The derived key.
    """

    log_n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def new(cls, password: str) -> PasswordHash:
        """Hash a password with a fresh salt and the current parameters."""
        salt = secrets.token_bytes(SALT_BYTES)
        key = _scrypt(password, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
        return cls(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, salt, key)

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Decode the stored form; ValueError says what is wrong."""
        match = _HASH_PATTERN.fullmatch(text)
        if match is None:
            raise ValueError("password_hash is not of the form $scrypt$ln=N,r=R,p=P$SALT$KEY")
        log_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
        if not (1 <= log_n <= MAX_LOG_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
            raise ValueError(f"scrypt parameters out of range (ln<={MAX_LOG_N}, r<={MAX_R}, p<={MAX_P})")
        try:
            salt = base64.b64decode(match.group(4), validate=True)
            key = base64.b64decode(match.group(5), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"password_hash has invalid base64: {exc}") from exc
        if not salt or len(key) < 16:
            raise ValueError("password_hash has an empty salt or a key shorter than 16 bytes")
        return cls(log_n, r, p, salt, key)

    def encode(self) -> str:
        """The stored form."""
        salt = base64.b64encode(self.salt).decode("ascii")
        key = base64.b64encode(self.key).decode("ascii")
        return f"$scrypt$ln={self.log_n},r={self.r},p={self.p}${salt}${key}"

    def verify(self, password: str) -> bool:
        """Whether ``password`` is the one hashed (constant-time comparison; slow by design)."""
        derived = _scrypt(password, self.salt, self.log_n, self.r, self.p, len(self.key))
        return hmac.compare_digest(derived, self.key)


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int, length: int = KEY_BYTES) -> bytes:
    n = 1 << log_n
    # scrypt needs 128 * n * r bytes; OpenSSL refuses above maxmem (32 MiB by default), so allow twice that.
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r + 1024 * 1024, dklen=length
    )


def digest_ha1(name: str, realm: str, password: str) -> str:
    """HTTP digest's HA1 = MD5("name:realm:password") as lower-case hex (RFC 7616 with MD5, as wsgidav).

    Args:
        name: The user name.
        realm: The realm of the challenges.
        password: The password.

    Returns:
        32 hex digits.
    """
    return hashlib.md5(f"{name}:{realm}:{password}".encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class User:
    """One entry of the users file.

    Attributes:
        name: The login name.
        role: What the user may do.
        password_hash: Checked by basic authentication.
        digest_ha1: MD5(name:realm:password) when digest authentication is enabled for the user.
    """

    name: str
    role: Role
    password_hash: PasswordHash
    digest_ha1: str | None = None


@dataclass(frozen=True)
class UserTable:
    """The users of one file.

    Attributes:
        users: Users by name.
        realm: The realm of challenges and digest HA1 values.
        source: The file it was loaded from, for messages; None for a table built in memory.
    """

    users: Mapping[str, User] = field(default_factory=lambda: MappingProxyType({}))
    realm: str = DEFAULT_REALM
    source: Path | None = None

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        return self.users.get(name)

    @property
    def has_digest(self) -> bool:
        """Whether any user can log in with HTTP digest."""
        return any(u.digest_ha1 is not None for u in self.users.values())

    def with_user(self, user: User) -> UserTable:
        """A copy with ``user`` added or replacing the one of the same name."""
        return replace(self, users=MappingProxyType({**self.users, user.name: user}))

    def without(self, name: str) -> UserTable:
        """A copy without the user ``name``."""
        return replace(self, users=MappingProxyType({k: v for k, v in self.users.items() if k != name}))

    def dump(self) -> str:
        """The file's text: header comment, realm, one table per user in name order."""
        lines = [_HEADER, f'realm = "{self.realm}"\n']
        for name in sorted(self.users):
            user = self.users[name]
            lines.append(f'\n[users."{name}"]\n')
            lines.append(f'role = "{user.role.value}"\n')
            lines.append(f'password_hash = "{user.password_hash.encode()}"\n')
            if user.digest_ha1 is not None:
                lines.append(f'digest_ha1 = "{user.digest_ha1}"\n')
        return "".join(lines)


def parse_users(text: str, source: Path | None = None) -> UserTable:
    """Parse and validate a users file's text.

    Args:
        text: The TOML text.
        source: The file, for messages.

    Returns:
        The table.

    Raises:
        UsersFileError: The text is not TOML or breaks the format; the message names the user and line.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"not valid TOML: {exc}", path=source) from exc
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        key = re.escape(unknown[0])
        raise UsersFileError(
            f"unknown key {unknown[0]!r} (expected realm and [users.NAME] tables)",
            path=source,
            line=_line_of(text, rf"{key}\s*[=.]") or _line_of(text, rf"\[+\s*{key}"),
        )
    realm = doc.get("realm", DEFAULT_REALM)
    if not isinstance(realm, str) or REALM_PATTERN.fullmatch(realm) is None:
        raise UsersFileError(
            f"realm must be a string matching {REALM_PATTERN.pattern}, not {realm!r}",
            path=source,
            line=_line_of(text, r"realm\s*="),
        )
    table = doc.get("users", {})
    if not isinstance(table, dict):
        raise UsersFileError("users must be a table of [users.NAME] tables", path=source)
    users: dict[str, User] = {}
    for name, entry in table.items():
        problem = _user_problem(name, entry)
        if problem is not None:
            raise UsersFileError(problem, path=source, user=name, line=_user_line(text, name))
        try:
            password_hash = PasswordHash.parse(entry["password_hash"])
        except ValueError as exc:
            raise UsersFileError(str(exc), path=source, user=name, line=_user_line(text, name)) from exc
        users[name] = User(name, Role(entry["role"]), password_hash, entry.get("digest_ha1"))
    return UserTable(MappingProxyType(users), realm, source)


def _user_problem(name: str, entry: Any) -> str | None:
    """What is wrong with one ``[users.NAME]`` table apart from its hash's encoding, or None."""
    if NAME_PATTERN.fullmatch(name) is None:
        return f"user names must match {NAME_PATTERN.pattern}"
    if not isinstance(entry, dict):
        return "must be a table with role and password_hash"
    unknown = sorted(set(entry) - _USER_KEYS)
    if unknown:
        return f"unknown key {unknown[0]!r} (expected {', '.join(sorted(_USER_KEYS))})"
    if entry.get("role") not in {r.value for r in Role}:
        return f"role must be 'owner' or 'consumer', not {entry.get('role')!r}"
    if not isinstance(entry.get("password_hash"), str):
        return "password_hash is missing (add users with `syncctl user add`)"
    ha1 = entry.get("digest_ha1")
    if ha1 is not None and (not isinstance(ha1, str) or _HA1_PATTERN.fullmatch(ha1) is None):
        return "digest_ha1 must be 32 lower-case hex digits"
    return None


def _line_of(text: str, pattern: str) -> int | None:
    found = re.compile(rf"^[ \t]*{pattern}", re.MULTILINE).search(text)
    return None if found is None else text.count("\n", 0, found.start()) + 1


def _user_line(text: str, name: str) -> int | None:
    quoted = re.escape(name)
    return _line_of(text, rf"\[\s*users\s*\.\s*(?:\"{quoted}\"|'{quoted}'|{quoted})\s*\]")


def load_users(path: Path) -> UserTable:
    """Read and validate a users file.

    Args:
        path: The file.

    Returns:
        The table; a file others may read is loaded with a warning.

    Raises:
        UsersFileError: The file cannot be read, is not UTF-8, or breaks the format.
    """
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read()
    except OSError as exc:
        raise UsersFileError(f"cannot read: {exc.strerror or exc}", path=path) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsersFileError(f"not UTF-8 (byte {exc.start})", path=path) from exc
    table = parse_users(text, path)
    if stat.S_IMODE(mode) & 0o077:
        log.warning("users file readable by others path=%s mode=%o", path, stat.S_IMODE(mode))
    return table


def add_user(path: Path, name: str, role: Role, password: str, *, digest: bool = False) -> bool:
    """Add a user to a users file (created when missing), or replace the user's role and password.

    Args:
        path: The users file.
        name: The user name (``NAME_PATTERN``).
        role: The user's role.
        password: The password; only its hashes are stored.
        digest: Also store the digest HA1 for the file's realm (see the module docstring).

    Returns:
        True when a user of that name was replaced.

    Raises:
        UsersFileError: The name or password cannot be used, or the file cannot be read or written.
    """
    if NAME_PATTERN.fullmatch(name) is None:
        raise UsersFileError(f"user names must match {NAME_PATTERN.pattern}", path=path, user=name)
    if not password:
        raise UsersFileError("the password is empty", path=path, user=name)
    replaced = False

    def change(table: UserTable) -> UserTable:
        nonlocal replaced
        replaced = name in table.users
        ha1 = digest_ha1(name, table.realm, password) if digest else None
        return table.with_user(User(name, role, PasswordHash.new(password), ha1))

    _update(path, change, create=True)
    log.info("user stored path=%s user=%s role=%s digest=%s", path, name, role.value, digest)
    return replaced


def remove_user(path: Path, name: str) -> None:
    """Remove a user from a users file.

    Args:
        path: The users file.
        name: The user to remove.

    Raises:
        UsersFileError: There is no such user, or the file cannot be read or written.
    """

    def change(table: UserTable) -> UserTable:
        if name not in table.users:
            raise UsersFileError("no such user", path=path, user=name)
        return table.without(name)

    _update(path, change, create=False)
    log.info("user removed path=%s user=%s", path, name)


def _update(path: Path, change: Callable[[UserTable], UserTable], *, create: bool) -> None:
    with _locked_directory(path.parent):
        table = UserTable(source=path) if create and not path.exists() else load_users(path)
        _write(path, change(table).dump())


@contextlib.contextmanager
def _locked_directory(directory: Path) -> Iterator[None]:
    # The lock is on the directory, not the file: the rename swaps the file's inode, so a lock on the file
    # would not exclude a writer that opened the new one.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsersFileError(f"cannot open directory: {exc.strerror or exc}", path=directory) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise UsersFileError(f"cannot write: {exc.strerror or exc}", path=path) from exc
