"""The access policy as a pure function: tokens, restricted groups, and which methods each covers."""

from __future__ import annotations

from pathlib import Path

import pytest

from infergate.server.access import (
    GROUP_OF_PATH,
    UNAUTHENTICATED,
    UNAVAILABLE,
    AccessConfigError,
    AccessPolicy,
    parse_restricted_protocol,
    read_tokens,
)
from infergate.server.protocol import METHOD_NAMES, SERVICE_NAME

INFER = f"/{SERVICE_NAME}/ModelInfer".encode()
LIVE = f"/{SERVICE_NAME}/ServerLive".encode()
UNLOAD = f"/{SERVICE_NAME}/RepositoryModelUnload".encode()
HEALTH_CHECK = b"/grpc.health.v1.Health/Check"


def _tokens(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_every_served_method_is_in_exactly_one_group() -> None:
    served = {f"/{SERVICE_NAME}/{name}".encode() for name in METHOD_NAMES}
    unsupported = {f"/{SERVICE_NAME}/{n}".encode() for n in METHOD_NAMES if n.startswith("Cuda")
                   or n in ("TraceSetting", "LogSettings")}
    assert served - unsupported <= set(GROUP_OF_PATH)
    assert GROUP_OF_PATH[HEALTH_CHECK] == "health" and GROUP_OF_PATH[INFER] == "inference"


def test_token_policy(tmp_path: Path) -> None:
    policy = AccessPolicy(_tokens(tmp_path, "# comment\n\nalpha-1\n  beta-2  \n"))
    assert policy.header_names == {b"authorization"} and not policy.is_open
    assert policy.check(INFER, {b"authorization": b"Bearer alpha-1"}) is None
    assert policy.check(INFER, {b"authorization": b"bearer beta-2"}) is None  # the scheme is case-insensitive
    assert policy.check(INFER, {}) == (UNAUTHENTICATED, "missing credentials: this server requires "
                                                        "'authorization: Bearer <token>' metadata")
    assert policy.check(INFER, {b"authorization": b"Bearer gamma"}) == (UNAUTHENTICATED, "invalid bearer token")
    assert policy.check(INFER, {b"authorization": b"alpha-1"})[1].startswith("malformed credentials")  # type: ignore[index]
    assert policy.check(INFER, {b"authorization": b"Bearer "})[1].startswith("malformed credentials")  # type: ignore[index]
    assert policy.check(LIVE, {}) is None and policy.check(HEALTH_CHECK, {}) is None
    assert policy.check(b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", {}) is not None


def test_reflection_v1alpha_and_v1_need_a_token_and_are_in_no_group(tmp_path: Path) -> None:
    paths = [f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo".encode()
             for version in ("v1alpha", "v1")]
    assert not set(paths) & set(GROUP_OF_PATH)
    policy = AccessPolicy(_tokens(tmp_path, "alpha-1\n"))
    for path in paths:
        assert policy.check(path, {})[0] == UNAUTHENTICATED  # type: ignore[index]
        assert policy.check(path, {b"authorization": b"Bearer alpha-1"}) is None


def test_token_reload_keeps_old_tokens_on_a_bad_file(tmp_path: Path) -> None:
    path = _tokens(tmp_path, "first\n")
    policy = AccessPolicy(path)
    path.write_text("second\n")
    policy.reload_tokens()
    assert policy.check(INFER, {b"authorization": b"Bearer second"}) is None
    assert policy.check(INFER, {b"authorization": b"Bearer first"}) is not None
    path.write_text("\n# none\n")
    policy.reload_tokens()
    assert policy.check(INFER, {b"authorization": b"Bearer second"}) is None


@pytest.mark.parametrize(("text", "message"), [
    ("", "holds no tokens"),
    ("has space\n", "line 1: a token must be printable ASCII without spaces"),
    ("ok\ntab\there\n", "line 2"),
])
def test_bad_token_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AccessConfigError, match=message):
        read_tokens(_tokens(tmp_path, text))


def test_restricted_groups() -> None:
    policy = AccessPolicy(restrictions=[parse_restricted_protocol("model-repository,statistics:admin-key=s3cret")])
    header = b"triton-grpc-protocol-admin-key"
    assert policy.header_names == {header}
    refusal = (UNAVAILABLE, "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'")
    assert policy.check(UNLOAD, {}) == refusal
    assert policy.check(UNLOAD, {header: b"wrong"}) == refusal
    assert policy.check(UNLOAD, {header: b"s3cret"}) is None
    assert policy.check(INFER, {}) is None


@pytest.mark.parametrize(("text", "message"), [
    ("inference", "expects <group>"),
    ("inference:key", "expects <group>"),
    (":key=v", "expects <group>"),
    ("inference:=v", "expects <group>"),
    ("health,bogus:key=v", "unknown protocol group 'bogus'"),
    ("inference:bad key=v", "may hold only letters"),
])
def test_bad_restricted_protocol(text: str, message: str) -> None:
    with pytest.raises(AccessConfigError, match=message) as info:
        parse_restricted_protocol(text)
    assert "=v" not in str(info.value)  # the secret value never appears in the error


def test_a_group_in_two_restrictions_is_refused() -> None:
    with pytest.raises(AccessConfigError, match="'inference' is named more than once"):
        AccessPolicy(restrictions=[parse_restricted_protocol("inference:a=1"),
                                   parse_restricted_protocol("metadata,inference:b=2")])


def test_open_policy() -> None:
    assert AccessPolicy().is_open and AccessPolicy().check(INFER, {}) is None
