"""Rewrite the generated sections of docs/models.md from the registry.

    python docs/generate.py            # rewrite docs/models.md in place
    python docs/generate.py --check    # exit 1, naming the stale sections, if it is out of date

A generated section is everything between ``<!-- generated:NAME -->`` and the next
``<!-- /generated -->``; ``SECTIONS`` maps each NAME to the function that writes it.
Everything outside the markers is written by hand and left as it is.
tests/test_docs.py runs the check, so a new mixer fails the tests until the page is
regenerated. This script lives outside the package: ``ssmlab`` knows nothing of docs/.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Document this checkout's ssmlab, not whichever one is installed.
sys.path.insert(0, str(ROOT))

import ssmlab  # noqa: E402
from ssmlab import registry  # noqa: E402

MODELS_MD = ROOT / "docs" / "models.md"

D_MODEL = 256
# The grid image mixers are counted on; their parameters depend on it.
IMAGE_SHAPE = (16, 16)


def _parameters(entry: registry.Entry) -> str:
    options = {"image_shape": IMAGE_SHAPE} if entry.extra["inputs"] == "image" else {}
    mixer = ssmlab.create_mixer(entry.name, D_MODEL, **options)
    count = f"{sum(p.numel() for p in mixer.parameters()):,}"
    return f"{count} (on {IMAGE_SHAPE[0]} x {IMAGE_SHAPE[1]})" if options else count


def mixers_table() -> str:
    """One row per registered mixer: its paper, file, parameter count at the defaults, direction and inputs."""
    rows = [f"| mixer | paper (arXiv) | file | parameters at d_model={D_MODEL}, defaults | direction | inputs |",
            "| --- | --- | --- | --- | --- | --- |"]
    for entry in registry.entries("mixer"):
        path = entry.obj.__module__.replace(".", "/") + ".py"
        direction = "causal" if entry.obj.causal else "bidirectional"
        rows.append(f"| `{entry.name}` | {entry.paper or '-'} | `{path}` | {_parameters(entry)} | {direction} "
                    f"| {entry.extra['inputs']} |")
    return "\n".join(rows)


SECTIONS = {"mixers": mixers_table}

_SECTION = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def render(text: str) -> str:
    """``text`` with every generated section rewritten; an unknown section name is an error."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in SECTIONS:
            raise ValueError(f"unknown generated section {name!r}; known: {sorted(SECTIONS)}")
        return f"{match[1]}{SECTIONS[name]()}\n{match[4]}"

    return _SECTION.sub(replace, text)


def stale_sections(text: str) -> list[str]:
    """Names of the generated sections of ``text`` that differ from what the registry gives."""
    fresh = {m["name"]: m["body"] for m in _SECTION.finditer(render(text))}
    return [m["name"] for m in _SECTION.finditer(text) if fresh[m["name"]] != m["body"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    parser.add_argument("path", nargs="?", type=Path, default=MODELS_MD)
    args = parser.parse_args(argv)
    text = args.path.read_text()
    if not _SECTION.search(text):
        print(f"{args.path}: no generated sections (<!-- generated:NAME --> ... <!-- /generated -->)",
              file=sys.stderr)
        return 1
    if args.check:
        stale = stale_sections(text)
        if stale:
            print(f"{args.path}: out of date in {', '.join(stale)}; run: python docs/generate.py", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
