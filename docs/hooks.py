"""MkDocs hook: pages whose source lives at the repository's root (RESULTS.md, CHANGELOG.md).

docs/results.md and docs/changelog.md hold one line naming their root file; this hook puts the root
file's text in its place, with its links rewritten from the root's point of view (docs/x -> x,
RESULTS.md -> results.md), so one file reads right on GitHub and on the site.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT_PAGES = {"results.md": "RESULTS.md", "changelog.md": "CHANGELOG.md"}
RENAMED = {name: page for page, name in ROOT_PAGES.items()}


def _rewrite(target: str) -> str:
    if target.startswith("docs/"):
        return target[len("docs/"):]
    name, sep, anchor = target.partition("#")
    return RENAMED.get(name, name) + sep + anchor


def on_page_markdown(markdown, page, config, files):
    source = ROOT_PAGES.get(page.file.src_uri)
    if source is None:
        return markdown
    text = (Path(config["config_file_path"]).parent / source).read_text(encoding="utf-8")
    return re.sub(r"(\]\()([^)\s]+)", lambda m: m.group(1) + _rewrite(m.group(2)), text)
