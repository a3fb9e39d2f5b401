"""put, daemon side: atomic, SHA-256-verified uploads that never leave a partial file.

validate (path, size) -> policy (allow.put; owner, group, mode for a non-root run_as)
-> the folder opened as run_as (radmin/userfiles.py), the real path checked again
-> same content and metadata? "unchanged"; same content, other metadata? fix it on the
   descriptor, "changed", no transfer
-> otherwise radmin/transfer.py lands it: journaled temporary file beside the
   destination, space reserved, PROCEED, FILE_DATA hashed and written, SHA-256
   compared, fsync, mode/owner on the descriptor, rename. Any failure: the temporary
   file is removed; the destination is untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import posixpath
import pwd
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radmin import policy, userfiles
from radmin.errors import BadRequest, PolicyDenied
from radmin.hashing import DigestCache, fd_sha256
from radmin.ops import Outcome, Request, fields, run_as_user
from radmin.protocol import FrameType
from radmin.transfer import Receiver, TransferFailed, land, receive_digest

# Digests of files this daemon wrote or hashed, so a repeated upload of a large file
# is answered "unchanged" without reading it again (see radmin/hashing.py on staleness).
DIGESTS = DigestCache()
# TESTS ONLY: seconds to sleep while hashing the destination, to stand in for a file
# large enough to take longer than a client's connect timeout. Read once, when the
# daemon starts; never set it in production.
TEST_HASH_DELAY = float(os.environ.get("RADMIN_TEST_HASH_DELAY") or 0)


@dataclass(frozen=True)
class PutParams:
    path: str  # absolute, normalized destination
    size: int
    sha256: str | None  # None: the client sends it in a DIGEST frame (it hashes meanwhile)
    mode: int | None  # --mode, or None: keep an existing file's bits, else local_mode
    local_mode: int  # the local file's permission bits
    owner: str | None
    group: str | None


@dataclass(frozen=True)
class Metadata:
    mode: int
    uid: int
    gid: int


FIELDS = (
    fields.Field("name", fields.FILE_NAME, "the local file's base name", required=True),
    fields.Field(
        "path",
        fields.PATH,
        "absolute destination; null: put.default_dir + name; ending in `/`: inside it",
    ),
    fields.Field(
        "size", fields.BYTE_COUNT, "bytes that follow; at most limits.max_put_size", required=True
    ),
    fields.Field("sha256", fields.SHA256, "the content's SHA-256; null: DIGEST after the data"),
    fields.Field("mode", fields.MODE, "--mode; null: an existing file keeps its bits"),
    fields.Field("local_mode", fields.MODE, "the local file's bits, for a new file", default=0o644),
    fields.Field("owner", fields.NAME, "--owner; null: see docs/policy.md"),
    fields.Field("group", fields.NAME, "--group; null: see docs/policy.md"),
)


def resolve_destination(path: str | None, name: str, default_dir: Path) -> str:
    """The contract's rules: absolute; None -> default_dir/NAME; trailing / -> inside."""
    if path is None:
        path = f"{default_dir}/{name}"
    if not path.startswith("/"):
        raise BadRequest(f"remote path {path!r} must be absolute")
    if path.endswith("/"):
        path += name
    if ".." in path.split("/"):
        raise BadRequest(f"remote path {path!r} must not contain '..'")
    return posixpath.normpath(path)


def parse_params(request: Request) -> PutParams:
    config = request.config
    values = fields.parse("put", FIELDS, request.params)
    size = values["size"]
    if size > config.limits.max_put_size:
        raise BadRequest(
            f"file of {size} bytes exceeds this daemon's limit of "
            f"{config.limits.max_put_size} bytes (limits.max_put_size)"
        )
    return PutParams(
        path=resolve_destination(values["path"], values["name"], config.put_default_dir),
        size=size,
        sha256=values["sha256"],
        mode=values["mode"],
        local_mode=values["local_mode"],
        owner=values["owner"],
        group=values["group"],
    )


# -- who the file belongs to: checked before anything is looked up ----------------------


def check_requested_metadata(params: PutParams, user: pwd.struct_passwd) -> None:
    """A non-root run_as user gets only what it could do itself: its own name, its own
    groups, no set-id or sticky bits. Compared as names first, so a refusal tells
    nothing about which users or groups exist."""
    if user.pw_uid == 0:
        return
    if params.owner is not None and params.owner != user.pw_name:
        raise PolicyDenied(f"{policy.DENIED}: --owner other than the run_as user {user.pw_name}")
    if params.group is not None and params.group not in _group_names(user):
        raise PolicyDenied(f"{policy.DENIED}: --group is not a group of {user.pw_name}")
    _refuse_special_bits(params.mode, user)


def _refuse_special_bits(mode: int | None, user: pwd.struct_passwd) -> None:
    if user.pw_uid != 0 and mode is not None and mode & 0o7000:
        raise PolicyDenied(
            f"{policy.DENIED}: setuid/setgid/sticky bits ({mode:04o}) for run_as {user.pw_name}"
        )


def _group_names(user: pwd.struct_passwd) -> set[str]:
    names = set()
    for gid in os.getgrouplist(user.pw_name, user.pw_gid):
        with contextlib.suppress(KeyError):
            names.add(grp.getgrgid(gid).gr_name)
    return names


def target_metadata(
    params: PutParams, user: pwd.struct_passwd, existing: userfiles.Entry | None
) -> Metadata:
    """An existing file keeps its bits (and, for a root run_as, its owner and group); a
    new file gets the local bits; --mode/--owner/--group override (scp -p, Ansible copy)."""
    if params.mode is not None:
        mode = params.mode
    else:
        mode = existing.mode & 0o7777 if existing is not None else params.local_mode
    _refuse_special_bits(mode, user)
    privileged = user.pw_uid == 0
    uid = existing.uid if existing is not None and privileged else user.pw_uid
    gid = existing.gid if existing is not None and privileged else user.pw_gid
    if params.owner is not None:
        try:
            owner = pwd.getpwnam(params.owner)
        except KeyError:
            raise BadRequest(f"no such user {params.owner!r} on this host") from None
        uid, gid = owner.pw_uid, owner.pw_gid
    if params.group is not None:
        try:
            gid = grp.getgrnam(params.group).gr_gid
        except KeyError:
            raise BadRequest(f"no such group {params.group!r} on this host") from None
    return Metadata(mode, uid, gid)


# -- the operation ----------------------------------------------------------------------


def run(request: Request) -> Outcome:
    params = parse_params(request)
    verdict = policy.path_verdict(request.client.allow_put, "put", params.path)
    request.audit.update(path=params.path, size=params.size, rule=verdict.rule)
    verdict.enforce()
    user = run_as_user(request.client.run_as)
    request.audit["run_as"] = user.pw_name
    check_requested_metadata(params, user)
    limit = request.config.limits.per_client.max_uploads
    with request.usage.hold(request.client.name, "uploads", limit):
        access = userfiles.access_as(user)
        try:
            return _put_into(request, params, user, access)
        finally:
            access.close()


def _put_into(
    request: Request, params: PutParams, user: pwd.struct_passwd, access: userfiles.Access
) -> Outcome:
    folder, name = posixpath.split(params.path)
    resolved = _open_folder(access, folder)
    # The rule must hold where the file really lands: a symlinked folder inside an
    # allowed tree must not lead outside it.
    real_path = posixpath.join(resolved, name)
    if real_path != params.path:
        request.audit["real_path"] = real_path
        policy.path_verdict(request.client.allow_put, "put", real_path).enforce()
    existing = _existing_file(access, name, params.path)
    target = target_metadata(params, user, existing)
    fields = _owner_fields(target)
    if existing is not None and existing.size == params.size:
        owns = user.pw_uid in (0, existing.uid)  # it could chmod/chgrp the file itself
        same, params = _compare_content(request, params, access, name, existing, target, owns)
        if same is not None:
            return same
    config = request.config
    receiver = Receiver(
        request.conn,
        params.size,
        params.sha256,
        config.limits.upload_stall_timeout,
        params.path,
        announce=lambda: request.conn.send_json(
            FrameType.PROCEED, {"path": params.path, "digest_first": False}
        ),
    )

    def fill(fd: int, temp: Path) -> str:
        digest = receiver.fill(fd, temp)
        _apply_metadata(fd, params.path, target)
        return digest

    try:
        digest, written = land(access, resolved, name, config.state_dir, params.size, fill)
    except TransferFailed as exc:
        if not receiver.started:
            raise
        # The client is streaming: answer now, then keep the connection in step.
        request.audit.update(bytes=receiver.received)
        return Outcome.failure(exc, after_reply=receiver.discard_rest)
    DIGESTS.remember(written, digest)
    fields.update(path=params.path, bytes=params.size, sha256=digest)
    return _outcome("changed", fields)


def _open_folder(access: userfiles.Access, folder: str) -> str:
    try:
        return access.open_folder(folder)
    except userfiles.PathChanged:
        raise PolicyDenied(f"{policy.DENIED}: {folder} changed while it was opened") from None
    except (FileNotFoundError, NotADirectoryError):
        raise BadRequest(
            f"folder {folder} does not exist (radmin does not create folders)"
        ) from None
    except OSError as exc:
        raise TransferFailed(f"cannot open folder {folder}: {exc.strerror}") from None


def _compare_content(
    request: Request,
    params: PutParams,
    access: userfiles.Access,
    name: str,
    existing: userfiles.Entry,
    target: Metadata,
    may_change_metadata: bool,
) -> tuple[Outcome | None, PutParams]:
    """`unchanged` (or a metadata-only change) when the destination already has this
    content; None when the data must be sent. The params come back with the client's
    digest when it was asked for first."""
    fd = access.open_read(name)
    if fd is None:
        return None, params  # the run_as user cannot read it: replace it
    try:
        if params.sha256 is None:  # both sides hash at once, then compare
            request.conn.send_json(FrameType.PROCEED, {"path": params.path, "digest_first": True})
            have = _hash_destination(request, fd)
            request.conn.activity = "waiting for the client's checksum"
            digest = receive_digest(request.conn, request.config.limits.idle_timeout)
            params = dataclasses.replace(params, sha256=digest)
        else:
            have = _hash_destination(request, fd)
        fields = {"path": params.path, "bytes": 0, "sha256": params.sha256, **_owner_fields(target)}
        if have != params.sha256:
            return None, params
        if Metadata(existing.mode & 0o7777, existing.uid, existing.gid) == target:
            return _outcome("unchanged", fields), params
        if not may_change_metadata:
            return None, params  # not the run_as user's file: replaced by one that is
        _apply_metadata(fd, params.path, target)
        return _outcome("changed", {**fields, "metadata_only": True}), params
    finally:
        os.close(fd)


def _hash_destination(request: Request, fd: int) -> str:
    """The destination's SHA-256, heartbeats going out meanwhile: a large file takes
    longer than the client's connect timeout, and the client must not think us dead."""
    with request.conn.keepalive():
        if TEST_HASH_DELAY:
            time.sleep(TEST_HASH_DELAY)
        return fd_sha256(fd, DIGESTS)


def _owner_fields(target: Metadata) -> dict[str, Any]:
    return {"owner": _user_name(target.uid), "group": _group_name(target.gid)}


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _outcome(status: str, fields: dict[str, Any]) -> Outcome:
    return Outcome({"status": status, **fields}, {"status": status, **fields})


def _existing_file(access: userfiles.Access, name: str, path: str) -> userfiles.Entry | None:
    """The regular file at the destination, None if there is none (a symlink there is
    replaced, never followed)."""
    try:
        entry = access.lstat(name)
    except OSError as exc:
        raise TransferFailed(f"cannot inspect {path}: {exc.strerror}") from None
    if entry is not None and stat.S_ISDIR(entry.mode):
        raise BadRequest(f"{path} is a directory (end the remote path with / to upload into it)")
    return entry if entry is not None and stat.S_ISREG(entry.mode) else None


def _apply_metadata(fd: int, path: str, target: Metadata) -> None:
    """On the descriptor, never by path: a name swapped for a symlink cannot redirect it."""
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (target.uid, target.gid):
            os.fchown(fd, target.uid, target.gid)
        os.fchmod(fd, target.mode)  # after chown: chown clears set-id bits
    except OSError as exc:
        raise TransferFailed(f"cannot set owner/mode on {path}: {exc.strerror}") from None
