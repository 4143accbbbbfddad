"""The id derivations against the shared vectors (the ones Rust and SQL also pass)."""

import json
import uuid

import pytest
from conftest import REPO

from idem_client import arguments_id, canonical_json, intent_id

VECTORS = json.loads((REPO / "testdata" / "intent_ids.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("v", VECTORS["intent_ids"]["vectors"], ids=lambda v: v["note"][:40])
def test_intent_ids_match_the_vectors(v):
    got = intent_id(v["scope"], v["intent"])
    assert str(got) == v["id"]
    assert got.version == 8


@pytest.mark.parametrize("v", VECTORS["argument_ids"]["vectors"], ids=lambda v: v["note"][:40])
def test_argument_ids_match_the_vectors(v):
    assert str(arguments_id(v["scope"], v["cell"], v["args"])) == v["id"]


def test_a_naive_port_would_differ_for_non_ascii():
    # json.dumps' defaults escape non-ASCII: the canonical form must not.
    args = {"text": "café ☕"}
    assert canonical_json(args) == '{"text":"café ☕"}'
    assert json.dumps(args, sort_keys=True, separators=(",", ":")) != canonical_json(args)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-7, "1e-7"),
        (1e21, "1e+21"),
        (1e16, "1e+16"),
        (9.5e15, "9500000000000000.0"),
        (0.00001, "0.00001"),
        (-0.0, "-0.0"),
        (2**64, "1.8446744073709552e+19"),
    ],
)
def test_floats_are_written_as_serde_json_writes_them(value, text):
    assert canonical_json(value) == text


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b", "x" * 201])
def test_bad_intents_are_refused_naming_the_part(bad):
    with pytest.raises(ValueError, match="intent"):
        intent_id("scope", bad)


def test_scope_and_intent_are_separated():
    assert intent_id("ab", "c") != intent_id("a", "bc")
    assert isinstance(intent_id("a", "b"), uuid.UUID)
