"""The README and docs/ point at what exists: files, anchors, make targets; the README stays a landing page; the
reference pages name every key of conf/ and the sweeper, with the defaults the code has.

`mkdocs build --strict` (CI, `make docs`) checks the site; these checks also cover the README, which the site
does not build, and run in a second without mkdocs installed.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# top-level files that docs/ pages include with pymdownx.snippets: their links must work from both places
INCLUDED = ("ARCHITECTURE.md", "BENCHMARKS.md")
README_MAX_LINES = 250
IMAGE_MAX_BYTES = 300 * 1024

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)
MAKE_IN_CODE = re.compile(r"^[ \t]*(?:\$[ \t]+)?make[ \t]+([A-Za-z0-9_-]+)", re.M)
MAKE_TARGET = re.compile(r"^([A-Za-z0-9_-]+)\s*:(?!=)", re.M)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """The Markdown without code blocks and code spans, where link syntax is only text."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _links(path: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(path.read_text(encoding="utf-8")))]


def _is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")


def _expanded(path: Path) -> str:
    """A page's text with its snippet includes filled in, as mkdocs renders it."""
    text = path.read_text(encoding="utf-8")
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), text)


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug of a heading's text (what an anchor like `page.md#slug` must name)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", _expanded(path)), re.M)
    return {_slug(h) for h in headings}


def _broken(page: Path, base: Path) -> list[str]:
    """The relative links of `page`, read from folder `base`, whose file or anchor does not exist."""
    broken = []
    for target in filter(_is_relative, _links(page)):
        file_part, _, anchor = target.partition("#")
        dest = (base / file_part).resolve()
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    return broken


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_anchor(page: Path):
    assert _broken(page, page.parent) == []


@pytest.mark.parametrize("name", INCLUDED)
def test_included_top_level_files_link_from_the_root_and_from_docs(name: str):
    page = ROOT / name
    assert any(f'--8<-- "{name}"' in p.read_text(encoding="utf-8") for p in DOCS.glob("*.md")), (
        f"docs/ must include {name} with a snippet line, but no page does"
    )
    assert _broken(page, ROOT) + _broken(page, DOCS) == []


def test_every_make_target_named_in_the_docs_exists():
    targets = set(MAKE_TARGET.findall((ROOT / "Makefile").read_text(encoding="utf-8")))
    named: dict[str, set[str]] = {}
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        code = [m.group(0) for m in FENCE.finditer(text)] + [m.group(0).strip("`") for m in INLINE_CODE.finditer(text)]
        for target in MAKE_IN_CODE.findall("\n".join(code)):
            named.setdefault(target, set()).add(str(page.relative_to(ROOT)))
    assert {"sweep", "sweep-offline", "test", "docs"} <= named.keys()
    assert {t: sorted(pages) for t, pages in named.items() if t not in targets} == {}


def test_readme_is_a_landing_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    for command in ("make sweep", "make sweep-offline", "make test"):
        assert command in text


def test_images_are_small():
    images = sorted(DOCS.rglob("*.png"))
    assert images, "docs/assets/report.png (the README's picture of the report) is missing"
    assert {str(p.relative_to(ROOT)): p.stat().st_size for p in images if p.stat().st_size > IMAGE_MAX_BYTES} == {}


def test_the_link_checks_catch_a_broken_link_and_anchor(tmp_path: Path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: yes\n", encoding="utf-8")
    page.write_text(
        "[ok](other.md#a-code-heading-yes) [gone](missing.md) [bad anchor](other.md#nope) "
        "`[in code](missing-too.md)` [web](https://example.org/x.md) [here](#top)\n",
        encoding="utf-8",
    )
    assert [b.split(" ")[0] for b in _broken(page, tmp_path)] == ["missing.md", "other.md#nope"]


# ------------------------------------------------------------------ the configuration reference covers conf/

CONF = ROOT / "conf"
# conf files whose keys the reference pages must name: (file, the page that documents them)
DOCUMENTED_CONF = [
    *[(f"task/{p.stem}.yaml", "configuration.md") for p in sorted((CONF / "task").glob("*.yaml"))],
    *[(f"model/{p.stem}.yaml", "configuration.md") for p in sorted((CONF / "model").glob("*.yaml"))],
    *[(f"optim/{p.stem}.yaml", "configuration.md") for p in sorted((CONF / "optim").glob("*.yaml"))],
    *[(f"schedule/{p.stem}.yaml", "configuration.md") for p in sorted((CONF / "schedule").glob("*.yaml"))],
    ("finetune/full.yaml", "configuration.md"),
    ("trainer/default.yaml", "configuration.md"),
    ("paths/default.yaml", "configuration.md"),
    ("config.yaml", "configuration.md"),
    ("hydra/default.yaml", "configuration.md"),
    ("judge/gemini.yaml", "judge.md"),
]


def _conf_keys(relative: str) -> list[str]:
    """Dotted paths of every leaf of a conf file (its `defaults` list left out)."""
    from omegaconf import OmegaConf

    content = OmegaConf.to_container(OmegaConf.load(CONF / relative), resolve=False)
    assert isinstance(content, dict)
    content.pop("defaults", None)
    if relative == "hydra/default.yaml":
        content.pop("help", None)  # the --help text, named as one key
        content["help"] = None

    def walk(node: object, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [k for key, value in node.items() for k in walk(value, f"{prefix}{key}.")]
        return [prefix.rstrip(".")]

    return walk(content, "")


@pytest.mark.parametrize(("relative", "page"), DOCUMENTED_CONF, ids=[r for r, _ in DOCUMENTED_CONF])
def test_every_conf_key_is_named_on_its_reference_page(relative: str, page: str):
    """A key is named by its dotted path or its last part in a code span (`retry.max_attempts`, `exp_base`)."""
    spans = {s.strip("`") for s in INLINE_CODE.findall((DOCS / page).read_text(encoding="utf-8"))}
    named = spans | {part for s in spans for part in re.split(r"[,\s]+", s)}
    missing = [k for k in _conf_keys(relative) if k not in named and k.rsplit(".", 1)[-1] not in named]
    assert missing == [], f"docs/{page} must name every key of conf/{relative}, but these are missing: {missing}"


def _table_under(page: str, heading: str) -> list[list[str]]:
    text = (DOCS / page).read_text(encoding="utf-8")
    table = text[text.index(heading) :].split("\n\n| ", 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in ("| " + table).splitlines()]


def _yaml_text(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_the_task_table_holds_each_tasks_defaults():
    """configuration.md's task table: one column per conf/task file, `—` where the task has no such key."""
    from omegaconf import OmegaConf

    header, _, *rows = _table_under("configuration.md", "**`task`**")
    tasks = [c.strip("`") for c in header[1:]]
    assert sorted(tasks) == sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
    conf = {t: OmegaConf.to_container(OmegaConf.load(CONF / "task" / f"{t}.yaml")) for t in tasks}
    for values in conf.values():  # a file's defaults list names its schema (tasks/config/schema.py), not a key
        values.pop("defaults", None)
    documented: set[tuple[str, str]] = set()
    for row in rows:
        for key in re.findall(r"`([\w.]+)`", row[0]):
            for task, cell in zip(tasks, row[1:], strict=True):
                documented.add((task, key))
                actual = conf[task].get(key, "—")
                shown = cell.strip("`")
                if cell == "—" or actual == "—":
                    assert cell == "—" and actual == "—", f"{task}.{key}: the table says {cell}, conf has {actual!r}"
                elif shown.endswith("…"):  # a shortened hub commit
                    assert _yaml_text(actual).startswith(shown[:-1]), f"{task}.{key}: {cell} vs {actual!r}"
                else:
                    assert shown == _yaml_text(actual), f"{task}.{key}: the table says {cell}, conf has {actual!r}"
    assert {(t, k) for t in tasks for k in conf[t]} <= documented


def test_the_sweeper_keys_table_holds_the_sweepers_defaults():
    """sweeps.md's key table names every field of the sweeper's config node, with its default where it is a literal."""
    import dataclasses

    from sweeper._config import LorasweepSweeperConf

    fields = {f.name: f.default for f in dataclasses.fields(LorasweepSweeperConf) if not f.name.startswith("_")}
    fields.pop("defaults")
    _, _, *rows = _table_under("sweeps.md", "## Keys")
    documented = {}
    for row in rows:
        keys = re.findall(r"`(\w+)`", row[0])
        defaults = re.findall(r"`([^`]*)`", row[1])
        for i, key in enumerate(keys):
            documented[key] = defaults[i] if len(defaults) == len(keys) else None
    assert sorted(documented) == sorted(fields)
    for key, text in documented.items():
        default = fields[key]
        # config groups name their default option; interpolated defaults are described in words
        if key in ("sampler", "pruner") or text is None or (isinstance(default, str) and "${" in default):
            continue
        assert text == _yaml_text(default), f"sweeps.md says {key} defaults to {text}, the code has {default!r}"
