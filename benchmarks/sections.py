"""BENCHMARKS.md's sections, each owned by the one renderer that writes it.

A section lies between two HTML comments (invisible on GitHub) that name its key, and a key names its
renderer, e.g. ``benchmarks/run.py: scaling`` or ``benchmarks/gpu.py: gpu``:

    <!-- begin benchmarks/gpu.py: gpu -->
    ## GPU (issue 22)
    ...
    <!-- end benchmarks/gpu.py: gpu -->

A renderer replaces the text between its own markers and nothing else: every other byte of the file,
other renderers' sections included, stays as it was (benchmarks/run.py once re-rendered the whole
file and dropped the GPU section of benchmarks/gpu.py; issue 34).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PREAMBLE = (  # the top of a BENCHMARKS.md that a renderer creates; no renderer rewrites it
    "# Benchmarks\n\n"
    "Generated; do not edit by hand. Each section is written by the script that its hidden markers\n"
    "name, and a script replaces only its own sections: `make bench` (`benchmarks/run.py`) the CPU\n"
    "sections, `python benchmarks/gpu.py --render` the GPU section.\n"
)
MARKER = re.compile(r"^<!-- (begin|end) (.+?) -->$", re.MULTILINE)


def begin(key: str) -> str:
    return f"<!-- begin {key} -->"


def end(key: str) -> str:
    return f"<!-- end {key} -->"


def marked(key: str, body: str) -> str:
    """``body`` between the markers of ``key`` (no newline after the end marker)."""
    return f"{begin(key)}\n{body.strip(chr(10))}\n{end(key)}"


def spans(text: str) -> dict[str, tuple[int, int]]:
    """Each section's key and its (start of the begin marker, end of the end marker) in ``text``, in
    file order. A marker without its pair, a section inside another or a key twice is an error: a
    renderer must not guess where a section ends (it could drop another one)."""
    found: dict[str, tuple[int, int]] = {}
    open_key, open_at = None, 0
    for match in MARKER.finditer(text):
        kind, key = match.groups()
        if kind == "begin":
            if open_key is not None:
                raise ValueError(f"BENCHMARKS.md: section {key!r} begins inside section {open_key!r}")
            if key in found:
                raise ValueError(f"BENCHMARKS.md: section {key!r} appears twice")
            open_key, open_at = key, match.start()
        else:
            if key != open_key:
                raise ValueError(f"BENCHMARKS.md: {match.group(0)} has no matching {begin(key)} before it")
            found[key] = (open_at, match.end())
            open_key = None
    if open_key is not None:
        raise ValueError(f"BENCHMARKS.md: {begin(open_key)} has no {end(open_key)}")
    return found


def section(text: str, key: str) -> str | None:
    """The text of section ``key`` (markers included), or None where it is absent."""
    where = spans(text).get(key)
    return None if where is None else text[where[0] : where[1]]


def put(text: str, key: str, body: str, order: Sequence[str] = (), first: bool = False) -> str:
    """``text`` with section ``key`` holding ``body``; every byte outside that section unchanged.

    An absent section is added: after the nearest section before ``key`` in ``order`` (the
    renderer's own keys, in the order it shows them), else before the nearest one after it; a
    renderer with none of its sections in the file yet puts it before every other section
    (``first``) or at the end of the file."""
    if MARKER.search(body):
        raise ValueError(f"BENCHMARKS.md: the new text of section {key!r} holds a marker of its own")
    found = spans(text)
    new = marked(key, body)
    if key in found:
        start, stop = found[key]
        return text[:start] + new + text[stop:]
    if key in order:
        at = list(order).index(key)
        before = [k for k in order[:at] if k in found]
        after = [k for k in order[at + 1 :] if k in found]
        if before:
            stop = found[before[-1]][1]
            return text[:stop] + "\n\n" + new + text[stop:]
        if after:
            start = found[after[0]][0]
            return text[:start] + new + "\n\n" + text[start:]
    if first and found:
        start = min(start for start, _ in found.values())
        return text[:start] + new + "\n\n" + text[start:]
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + new + "\n"
