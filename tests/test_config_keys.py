"""Named client keys (lkn.config.keys): every form a key table may take, every error with its
key path, the flat api_keys as key-1…, and matching a request's token to a key."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from lkn.config import ConfigError, ServerConfig, build_config
from lkn.config.keys import (KeyConfig, digest, match_key, parse_keys, unknown_models,
                             with_public_models)
from lkn.config.values import collecting
from tests.conftest import write_config

ENV = {"LKN_KEY_ALICE": "alice-secret", "LKN_EMPTY": ""}
ALICE = hashlib.sha256(b"alice-secret").hexdigest()
MODEL = {"name": "m", "ctx_size": 512, "model_file": "/models/m.gguf"}


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(keys: Any, api_keys: tuple[str, ...] = (), admin_keys: tuple[str, ...] = ()
          ) -> tuple[tuple[KeyConfig, ...], list[str]]:
    """The keys and every error, as a whole file's check collects them."""
    with collecting() as errors:
        result = parse_keys(keys, api_keys, admin_keys, ENV)
    return result, errors


@pytest.mark.parametrize("table, expected", [
    ({"id": "alice", "key_env": "LKN_KEY_ALICE"}, KeyConfig(id="alice", sha256=ALICE)),
    ({"id": "alice", "key": "alice-secret"}, KeyConfig(id="alice", sha256=ALICE)),
    ({"id": "alice", "key_sha256": ALICE}, KeyConfig(id="alice", sha256=ALICE)),
    ({"id": "alice", "key_sha256": ALICE.upper()}, KeyConfig(id="alice", sha256=ALICE)),
    ({"id": "a.b_c-9", "key": "alice-secret"}, KeyConfig(id="a.b_c-9", sha256=ALICE)),
    ({"id": "x" * 64, "key": "alice-secret"}, KeyConfig(id="x" * 64, sha256=ALICE)),
    ({"id": "alice", "key": "alice-secret", "models": ["qwen", "smollm2"],
      "max_concurrent": 2, "requests_per_minute": 60, "tokens_per_minute": 20000,
      "tokens_per_day": 2000000, "priority": "batch", "forward_user_headers": True},
     KeyConfig(id="alice", sha256=ALICE, models=("qwen", "smollm2"), max_concurrent=2,
               requests_per_minute=60, tokens_per_minute=20000, tokens_per_day=2000000,
               priority="batch", forward_user_headers=True)),
    ({"id": "alice", "key": "alice-secret", "models": {}, "priority": "interactive",
      "max_concurrent": 1.0}, KeyConfig(id="alice", sha256=ALICE, priority="interactive",
                                        max_concurrent=1)),
])
def test_every_valid_key_form(table: dict[str, Any], expected: KeyConfig) -> None:
    keys, errors = parse([table])
    assert errors == []
    assert keys == (expected,)


@pytest.mark.parametrize("keys, message", [
    ({"id": "a"}, 'server.keys: must be a list of key tables like { id = "alice", '
                  'key_env = "LKN_KEY_ALICE" } (value not shown)'),
    ("secret", 'server.keys: must be a list of key tables like { id = "alice", '
               'key_env = "LKN_KEY_ALICE" } (value not shown)'),
    (["secret"], 'server.keys[1]: must be a table like { id = "alice", '
                 'key_env = "LKN_KEY_ALICE" } (value not shown)'),
    ([{"key": "s"}], "server.keys[1].id: must be a name (letters, digits, - _ .), got nil"),
    ([{"id": "al ice", "key": "s"}],
     "server.keys[1].id: must be 1 to 64 letters, digits, '-', '_' or '.', got \"al ice\""),
    ([{"id": "x" * 65, "key": "s"}],
     f"server.keys[1].id: must be 1 to 64 letters, digits, '-', '_' or '.', "
     f"got \"{'x' * 65}\""),
    ([{"id": 7, "key": "s"}],
     "server.keys[1].id: must be 1 to 64 letters, digits, '-', '_' or '.', got 7"),
    ([{"id": "a"}], "server.keys[1]: must set exactly one of key_env, key, key_sha256, got none"),
    ([{"id": "a", "key": "s", "key_env": "LKN_KEY_ALICE"}],
     "server.keys[1]: must set exactly one of key_env, key, key_sha256, got key_env and key"),
    ([{"id": "a", "key": "s", "key_env": "E", "key_sha256": ALICE}],
     "server.keys[1]: must set exactly one of key_env, key, key_sha256, "
     "got key_env and key and key_sha256"),
    ([{"id": "a", "key_env": "LKN_KEY_BOB"}],
     "server.keys[1].key_env: the environment variable LKN_KEY_BOB is not set"),
    ([{"id": "a", "key_env": "LKN_EMPTY"}],
     "server.keys[1].key_env: the environment variable LKN_EMPTY is empty"),
    ([{"id": "a", "key_env": "sk-live-123"}],
     "server.keys[1].key_env: must name an environment variable (letters, digits, _), not "
     "hold the key (value not shown)"),
    ([{"id": "a", "key": ""}], "server.keys[1].key: must be a non-empty string (value not shown)"),
    ([{"id": "a", "key": 42}], "server.keys[1].key: must be a non-empty string (value not shown)"),
    ([{"id": "a", "key_sha256": "sk-live-123"}],
     "server.keys[1].key_sha256: must be the 64 hex digits of the key's sha256, as "
     "`printf %s KEY | sha256sum` prints them (value not shown)"),
    ([{"id": "a", "key_sha256": ALICE + "0"}],
     "server.keys[1].key_sha256: must be the 64 hex digits of the key's sha256, as "
     "`printf %s KEY | sha256sum` prints them (value not shown)"),
    ([{"id": "a", "key": "s"}, {"id": "b", "key": "t", "tokens_per_day": 0}],
     "server.keys[2].tokens_per_day: must be a positive integer, got 0"),
    ([{"id": "a", "key": "s", "max_concurrent": 1.5}],
     "server.keys[1].max_concurrent: must be a positive integer, got 1.5"),
    ([{"id": "a", "key": "s", "requests_per_minute": "60"}],
     'server.keys[1].requests_per_minute: must be a positive integer, got "60"'),
    ([{"id": "a", "key": "s", "tokens_per_minute": True}],
     "server.keys[1].tokens_per_minute: must be a positive integer, got True"),
    ([{"id": "a", "key": "s", "priority": "urgent"}],
     'server.keys[1].priority: must be one of interactive, batch, got "urgent"'),
    ([{"id": "a", "key": "s", "forward_user_headers": "yes"}],
     'server.keys[1].forward_user_headers: must be true or false, got "yes"'),
    ([{"id": "a", "key": "s", "models": "qwen"}],
     'server.keys[1].models: must be a list of strings, got "qwen"'),
    ([{"id": "a", "key": "s", "models": ["qwen", ""]}],
     'server.keys[1].models[2]: must be a non-empty string, got ""'),
    ([{"id": "a", "key": "s", "max_concurent": 2}], "server.keys[1].max_concurent: unknown key"),
    ([{"id": "a", "key": "s"}, {"id": "a", "key": "t"}],
     'server.keys[2].id: "a" is already the id of server.keys[1]'),
    ([{"id": "a", "key": "s"}, {"id": "b", "key_sha256": sha("s")}],
     "server.keys[2]: the same key as server.keys[1] (each key names one client)"),
])
def test_every_invalid_key_form_names_its_path(keys: Any, message: str) -> None:
    _, errors = parse(keys)
    assert errors == [message]


def test_an_error_never_quotes_a_secret() -> None:
    secret = "sk-live-very-secret"
    tables = [{"id": "a", "key": secret, "key_sha256": secret}, {"id": "b", "key_env": secret},
              {"id": "c", "key_sha256": secret}, {"id": "d", "key": secret},
              {"id": "e", "key": secret}]
    _, errors = parse(tables, admin_keys=(secret,))
    assert len(errors) == 5
    assert not any(secret in e for e in errors)


def test_a_key_table_with_an_error_is_left_out_and_the_others_kept() -> None:
    keys, errors = parse([{"id": "a"}, {"id": "b", "key": "s", "tokens_per_day": -1}])
    assert [k.id for k in keys] == ["b"]
    assert keys[0].tokens_per_day is None
    assert len(errors) == 2


def test_outside_a_whole_file_check_the_first_error_raises() -> None:
    with pytest.raises(ConfigError, match=r"server.keys\[1\].key_env: the environment"):
        parse_keys([{"id": "a", "key_env": "LKN_KEY_BOB"}], (), (), {})


def test_key_env_reads_the_process_environment_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKN_TEST_KEY_ENV", "from-env")
    assert parse_keys([{"id": "a", "key_env": "LKN_TEST_KEY_ENV"}], (), ()) == (
        KeyConfig(id="a", sha256=sha("from-env")),)


@pytest.mark.parametrize("keys, api_keys, admin_keys, message", [
    ([{"id": "a", "key": "adm"}], (), ("adm",),
     "server.keys[1]: the same key as one of server.admin_keys (admin keys are separate: give "
     "this client a key of its own)"),
    ([{"id": "a", "key_sha256": sha("adm")}], (), ("other", "adm"),
     "server.keys[1]: the same key as one of server.admin_keys (admin keys are separate: give "
     "this client a key of its own)"),
    ([{"id": "key-2", "key": "s"}], ("f1", "f2"), (),
     'server.keys[1].id: "key-2" is already the id of server.api_keys[2]'),
    ([{"id": "a", "key": "f2"}], ("f1", "f2", "f2"), (),
     "server.keys[1]: the same key as server.api_keys[2] (each key names one client)"),
])
def test_collisions_with_admin_and_flat_keys(keys: Any, api_keys: tuple[str, ...],
                                             admin_keys: tuple[str, ...], message: str) -> None:
    _, errors = parse(keys, api_keys, admin_keys)
    assert errors == [message]


def test_flat_api_keys_become_numbered_keys_without_limits_after_the_named_ones() -> None:
    keys, errors = parse([{"id": "key-3", "key": "named"}], ("f1", "f2"))
    assert errors == []
    assert keys == (KeyConfig(id="key-3", sha256=sha("named")),
                    KeyConfig(id="key-1", sha256=sha("f1")),
                    KeyConfig(id="key-2", sha256=sha("f2")))


def test_flat_keys_keep_what_they_always_allowed() -> None:
    # the same entry twice, and a flat key that is also an admin key (README: how an admin key
    # passes the OpenAI routes), were accepted before named keys and still are
    keys, errors = parse({}, ("f1", "f1", "adm"), ("adm",))
    assert errors == []
    assert [k.id for k in keys] == ["key-1", "key-2", "key-3"]


def test_server_config_holds_every_client_key() -> None:
    cfg = build_config({"server": {"api_keys": ["f1"],
                                   "keys": [{"id": "alice", "key": "a", "models": ["m"]}]},
                        "models": [MODEL]})
    assert [k.id for k in cfg.server.keys] == ["alice", "key-1"]
    assert cfg.server.api_keys == ("f1",)
    assert cfg.server.requires_key


def test_errors_in_keys_are_listed_with_the_rest_of_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"server": {"typo": 1, "keys": [{"id": "a", "key": "s", "rpm": 5},
                                                     {"id": "b"}]},
                      "models": [MODEL]})
    assert info.value.errors == [
        "server.keys[1].rpm: unknown key",
        "server.keys[2]: must set exactly one of key_env, key, key_sha256, got none",
        "server.typo: unknown key"]


def test_keys_from_a_lua_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKN_TEST_KEY_ALICE", "alice-secret")
    lua = ('server = { keys = { { id = "alice", key_env = "LKN_TEST_KEY_ALICE", '
           'models = { "m" }, tokens_per_day = 2000000, forward_user_headers = true }, '
           '{ id = "job", key = "j", priority = "batch", max_concurrent = 2 } } }\n'
           'models = { { name = "m", ctx_size = 512, model_file = "/models/m.gguf" } }\n')
    cfg = write_config(tmp_path, lua)
    assert cfg.server.keys == (
        KeyConfig(id="alice", sha256=ALICE, models=("m",), tokens_per_day=2000000,
                  forward_user_headers=True),
        KeyConfig(id="job", sha256=sha("j"), priority="batch", max_concurrent=2))


@pytest.mark.parametrize("server, keys, requires", [
    (ServerConfig(), (), False),
    (ServerConfig(api_keys=("f1", "f2")), ("key-1", "key-2"), True),
    (ServerConfig(keys=(KeyConfig(id="a", sha256=sha("s")),)), ("a",), True),
    (ServerConfig(admin_keys=("adm",)), (), False),
])
def test_a_server_config_built_in_code_has_its_keys(server: ServerConfig,
                                                    keys: tuple[str, ...],
                                                    requires: bool) -> None:
    assert tuple(k.id for k in server.keys) == keys
    assert server.requires_key is requires


def test_replace_keeps_the_keys() -> None:
    server = ServerConfig(api_keys=("f1",))
    assert dataclasses.replace(server, max_in_flight=3).keys == server.keys


KEYS = (KeyConfig(id="alice", sha256=sha("alice-secret")),
        KeyConfig(id="bob", sha256=sha("bob-secret")),
        KeyConfig(id="raw", sha256=hashlib.sha256(b"caf\xe9").hexdigest()))


@pytest.mark.parametrize("token, expected", [
    ("alice-secret", "alice"),
    ("bob-secret", "bob"),
    ("bob-secret ", None),
    ("", None),
    ("ALICE-SECRET", None),
    (sha("alice-secret"), None),               # the digest itself is not the key
    ("caf\udce9", "raw"),                      # aiohttp's surrogate for the byte 0xe9
    ("café", None),                            # the same text, other bytes (c3 a9)
    ("\udcff\udcfe", None),
])
def test_match_key(token: str, expected: str | None) -> None:
    found = match_key(token, KEYS)
    assert (found.id if found else None) == expected


def test_match_key_with_no_keys_and_with_a_duplicate_takes_the_first() -> None:
    assert match_key("x", ()) is None
    twins = (KeyConfig(id="key-1", sha256=sha("x")), KeyConfig(id="key-2", sha256=sha("x")))
    assert match_key("x", twins) == twins[0]


@pytest.mark.parametrize("models, name, allowed", [
    ((), "anything", True),
    (("qwen", "smollm2"), "qwen", True),
    (("qwen", "smollm2"), "smollm2", True),
    (("qwen",), "smollm2", False),
    (("qwen",), "Qwen", False),
    (("qwen",), "", False),
])
def test_allows(models: tuple[str, ...], name: str, allowed: bool) -> None:
    assert KeyConfig(id="k", sha256=sha("k"), models=models).allows(name) is allowed


def test_unknown_models_name_each_key_and_model() -> None:
    keys = (KeyConfig(id="alice", sha256=sha("a"), models=("qwen", "ghost")),
            KeyConfig(id="bob", sha256=sha("b"), models=("fast",)),
            KeyConfig(id="key-1", sha256=sha("c")))
    assert unknown_models(keys, {"qwen", "fast"}) == [
        'server.keys[1].models[2]: no such model, got "ghost" (key "alice")']
    assert unknown_models(keys, set()) == [
        'server.keys[1].models[1]: no such model, got "qwen" (key "alice")',
        'server.keys[1].models[2]: no such model, got "ghost" (key "alice")',
        'server.keys[2].models[1]: no such model, got "fast" (key "bob")']


def test_with_public_models_resolves_aliases_so_allows_takes_the_models_name() -> None:
    keys = (KeyConfig(id="a", sha256=sha("a"), models=("fast", "qwen", "ghost")),
            KeyConfig(id="b", sha256=sha("b")))
    public = {"qwen": "qwen", "fast": "qwen", "smollm2": "smollm2"}
    resolved = with_public_models(keys, public)
    assert resolved[0].models == ("qwen", "ghost")
    assert resolved[0].allows("qwen") and not resolved[0].allows("fast")
    assert resolved[1] is keys[1]


def test_the_secrets_digest_stays_out_of_repr() -> None:
    key = KeyConfig(id="alice", sha256=digest("alice-secret"))
    assert key.sha256 == ALICE
    assert ALICE not in repr(key)
