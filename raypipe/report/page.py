"""The page's template files (raypipe/report/templates/, shipped as package data) made into one page.

report.html is the page. Two kinds of placeholder, each `%%NAME%%`:
  - `%%gallery.js%%`, `%%report.css%%`, ... (a name with a dot): the text of that template file,
    inlined where it stands, so the page needs nothing but itself;
  - `%%ROWS%%`, `%%SUMMARY%%`, ... (no dot): a value made by raypipe.report.render_html.
A value's text is never scanned for placeholders again (a prompt may say `%%ROWS%%`), and a
placeholder with no value is an error, not an empty hole in the page.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

PAGE = "report.html"
_PLACEHOLDER = re.compile(r"%%([A-Za-z0-9_.-]+)%%")


@functools.cache
def template(name: str) -> str:
    """The text of templates/<name>, read through importlib.resources (from a wheel as from a checkout)."""
    return resources.files("raypipe.report").joinpath("templates", name).read_text(encoding="utf-8")


def _include(match: re.Match[str]) -> str:
    name = match.group(1)
    if "." not in name:
        return match.group(0)  # a value: filled in by fill()
    text = template(name)
    end = "</script" if name.endswith(".js") else "</style"
    if end in text.lower():
        raise ValueError(f"template {name} holds {end!r}: it would end the block it is inlined into")
    return text


def fill(values: dict[str, str], name: str = PAGE) -> str:
    """Template `name` with its files inlined and its values filled in."""
    page = _PLACEHOLDER.sub(_include, template(name))

    def value(match: re.Match[str]) -> str:
        try:
            return values[match.group(1)]
        except KeyError:
            raise KeyError(f"template {name}: no value for %%{match.group(1)}%%") from None

    return _PLACEHOLDER.sub(value, page)


def json_for_script(value: Any) -> str:
    # Inside <script type="application/json"> only "</script" could end the block: escape every "<".
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
