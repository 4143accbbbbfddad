"""Action ids, derived exactly as the server derives them (docs/intents.md).

A client that computes an id differently from the server names another action, and a
retry under that id is a second effect. Both derivations are checked against
``testdata/intent_ids.json``, the vectors the Rust and SQL implementations also pass.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any

#: Namespace of ids derived from arguments (UUIDv5).
ARGUMENTS_NAMESPACE = uuid.UUID("6964656d-2d69-6e74-656e-742d76310001")

#: Longest scope or intent, in characters.
MAX_INTENT_CHARS = 200

_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1


def check_intent_part(field: str, value: str) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``value`` is a valid scope or intent."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be a string")
    if not value.strip():
        raise ValueError(f"{field}: must not be blank")
    if len(value) > MAX_INTENT_CHARS:
        raise ValueError(f"{field}: at most {MAX_INTENT_CHARS} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError(f"{field}: must not contain NUL (U+0000)")


def intent_id(scope: str, intent: str) -> uuid.UUID:
    """The action id a named intent gets: UUIDv8 over SHA-256 of the version tag, scope and
    intent, as given (no trimming, no Unicode normalisation)."""
    check_intent_part("scope", scope)
    check_intent_part("intent", intent)
    h = bytearray(
        hashlib.sha256(
            b"idem.intent.v1\x00" + scope.encode("utf-8") + b"\x00" + intent.encode("utf-8")
        ).digest()[:16]
    )
    h[6] = (h[6] & 0x0F) | 0x80
    h[8] = (h[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(h))


def arguments_id(scope: str, cell: str, args: dict[str, Any]) -> uuid.UUID:
    """The id derived from (scope, cell, arguments). Any changed argument is another id and
    so another action: prefer :func:`intent_id` for anything a re-planned turn may reword."""
    check_intent_part("scope", scope)
    return uuid.uuid5(ARGUMENTS_NAMESPACE, f"{scope}\n{cell}\n{canonical_json(args)}")


def canonical_json(value: Any) -> str:
    """Compact JSON with keys sorted at every depth, byte for byte as the server writes it
    (serde_json): raw UTF-8, minimal escapes, floats in Rust's shortest form."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def _write(v: Any, out: list[str]) -> None:
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        # serde_json keeps i64/u64 exactly; anything wider it reads as a double.
        out.append(str(v) if _I64_MIN <= v <= _U64_MAX else _float(float(v)))
    elif isinstance(v, float):
        out.append(_float(v))
    elif isinstance(v, str):
        _string(v, out)
    elif isinstance(v, dict):
        out.append("{")
        for i, k in enumerate(sorted(v)):
            if not isinstance(k, str):
                raise TypeError(f"object keys must be strings, got {type(k).__name__}")
            if i:
                out.append(",")
            _string(k, out)
            out.append(":")
            _write(v[k], out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _write(x, out)
        out.append("]")
    else:
        raise TypeError(f"not JSON: {type(v).__name__}")


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\b": "\\b",
    "\f": "\\f",
}


def _string(s: str, out: list[str]) -> None:
    out.append('"')
    for ch in s:
        e = _ESCAPES.get(ch)
        if e is not None:
            out.append(e)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')


def _float(f: float) -> str:
    """A double as serde_json lays it out (ryu's shortest digits; plain notation for
    1e-5 <= |f| < 1e16, otherwise ``1e+21`` / ``1e-7``), from Python's shortest digits."""
    if not math.isfinite(f):
        # serde_json writes non-finite numbers as null.
        return "null"
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    f = abs(f)
    if f == 0.0:
        return sign + "0.0"
    mantissa, _, exp = repr(f).partition("e")
    whole, _, frac = mantissa.partition(".")
    all_digits = whole + frac
    significant = all_digits.lstrip("0")
    # 10^(kk-1) <= f < 10^kk: where the decimal point sits relative to the first digit.
    kk = len(whole) - (len(all_digits) - len(significant)) + (int(exp) if exp else 0)
    digits = significant.rstrip("0")
    n = len(digits)
    k = kk - n
    if 0 <= k and kk <= 16:
        body = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        body = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        body = "0." + "0" * (-kk) + digits
    else:
        # serde_json writes a positive exponent with its sign (1e+21), a negative one 1e-7.
        e = kk - 1
        exp_text = f"e+{e}" if e > 0 else f"e{e}"
        body = (digits if n == 1 else f"{digits[0]}.{digits[1:]}") + exp_text
    return sign + body
