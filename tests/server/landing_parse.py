"""Reading the landing page as a user would: the text of its snippets, and its figures."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from tests.server.proxykit import fetch


class Sections(HTMLParser):
    """The text of each ``<pre>``, under the heading (``<h2>``) it follows."""

    def __init__(self) -> None:
        super().__init__()
        self.pre: dict[str, list[str]] = {}
        self.cells: dict[str, str] = {}
        self._heading = ""
        self._tag = ""
        self._text = ""
        self._row_key = ""

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("h2", "pre", "th", "td"):
            self._tag, self._text = tag, ""

    def handle_data(self, data: str) -> None:
        if self._tag:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag != self._tag:
            return
        if tag == "h2":
            self._heading = self._text.strip()
        elif tag == "pre":
            self.pre[self._heading] = self._text.strip("\n").split("\n")
        elif tag == "th":
            self._row_key = self._text
        elif tag == "td":
            self.cells[self._row_key] = self._text
        self._tag = ""


def parse(page: str) -> Sections:
    sections = Sections()
    sections.feed(page)
    return sections


def snippet_settings(base_url: str) -> tuple[str, list[str]]:
    """The substituter URL and trusted keys that the landing page's nix.conf snippet tells a user to set."""
    lines = parse(fetch(base_url, "/").body.decode()).pre["nix.conf"]
    settings = dict(line.split(" = ", 1) for line in lines if not line.startswith("#"))
    return settings["extra-substituters"], settings["extra-trusted-public-keys"].split()
