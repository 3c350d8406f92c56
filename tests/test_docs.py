"""The README and docs/ cannot go stale silently: the commands, config options and links they name exist, and
the README's results table has the format its generator writes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from medxfer.analysis import headline
from medxfer.config import config_dir

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages written on another branch, linked from here before they land. Once one exists, this test fails until it
# is removed from the set, so the exemption cannot outlive its reason.
PENDING_PAGES: set[str] = set()
RANK_ENSEMBLES = {"ens_rank", "ens_z", "ens_linear"}

COMMAND = re.compile(r"(?<![\w/.~-])(medxfer-[a-z]+)\b(?![-.\w])")
GROUP_OPTION = re.compile(r"(?<![\w./+~-])((?:hydra/)?[a-z_]+(?:/[a-z_]+)?)=([\w,.\-/<>]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _scripts() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _groups() -> set[str]:
    conf = Path(config_dir())
    return {str(p.relative_to(conf)) for p in conf.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))}


def _plugin_options(group: str) -> set[str]:
    """Options of a Hydra group that Hydra's installed plugins provide (``hydra/launcher=joblib``)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()
    node = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part, {})
    return {name.removesuffix(".yaml") for name in node}


def _lines():
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            yield page.relative_to(ROOT), number, line


def test_the_pages_exist():
    assert (ROOT / "docs").is_dir()
    names = {p.name for p in PAGES}
    for topic in ("default-study", "finetune", "analysis", "commands", "cluster", "paper", "scores",
                  "configuration", "zoo", "datasets", "operations", "contributing"):
        assert f"{topic}.md" in names, f"docs/{topic}.md is missing"


def test_readme_is_a_newcomers_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    assert "make study" in text and "make test" in text
    for script in _scripts():  # the one table of commands names every command
        assert f"| `{script}` |" in text, f"README's command table lacks {script}"


def test_every_command_named_exists():
    scripts = _scripts()
    unknown = [(str(p), n, m.group(1)) for p, n, line in _lines() for m in COMMAND.finditer(line)
               if m.group(1) not in scripts]
    assert not unknown, f"commands named in the docs but not in pyproject's [project.scripts]: {unknown}"


def test_every_group_option_named_exists():
    from medxfer.scores import available_scores

    conf, groups = Path(config_dir()), _groups()
    scores = set(available_scores(include_opt_in=True))
    checked, unknown = 0, []
    for page, number, line in _lines():
        if "--config-dir" in line:  # options from the user's own config folder
            continue
        for m in GROUP_OPTION.finditer(line):
            group, value = m.group(1), m.group(2)
            if group not in groups or not value or "<" in value or value.startswith(("/", "~")) \
                    or value.endswith(".csv"):
                continue  # not a group, a placeholder, or a path (medxfer-rank dataset=/data/mine)
            for option in value.split(","):
                checked += 1
                if (conf / group / f"{option}.yaml").is_file():
                    continue
                if group.startswith("hydra/") and option in _plugin_options(group):
                    continue
                if group == "score" and "medxfer-rank" in line and option in scores | RANK_ENSEMBLES:
                    continue  # medxfer-rank reads score=<name> as rank.score
                unknown.append(f"{page}:{number}: {group}={option}")
    assert not unknown, "documented config options that do not exist:\n" + "\n".join(unknown)
    assert checked > 50  # the pattern still finds the options the docs name


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    in_code, out = False, set()
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def test_every_relative_link_resolves():
    broken = []
    for page, number, line in _lines():
        for m in LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (ROOT / page).parent / path if path else ROOT / page
            if path and str(resolved.resolve().relative_to(ROOT)) in PENDING_PAGES:
                continue
            if not resolved.exists():
                broken.append(f"{page}:{number}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page}:{number}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_pending_pages_are_still_pending():
    landed = sorted(page for page in PENDING_PAGES if (ROOT / page).exists())
    assert not landed, f"{landed} exist now: remove them from PENDING_PAGES in tests/test_docs.py"


def test_the_readme_results_table_is_the_generators_format():
    lines = headline.table_between_markers((ROOT / "README.md").read_text())
    assert lines[:2] == headline.HEADER
    assert len(lines) > 2
    bad = [line for line in lines[2:] if not headline.ROW.match(line)]
    assert not bad, f"rows not in the format of python -m medxfer.analysis.headline: {bad}"


def test_the_generator_renders_an_analysis_table(tmp_path):
    intervals = pd.DataFrame({
        "dataset": ["ALL", "ALL", "ALL", "synthetic_derm"],
        "score": ["logme", "static_rank", "hscore", "logme"],
        "tau": [0.11, 0.54, float("nan"), 0.3],
        "tau2_lo": [-0.19, 0.25, float("nan"), 0.1],
        "tau2_hi": [0.39, 0.78, float("nan"), 0.5],
        "verdict": ["indistinguishable from random", "above random", "undefined", "above random"],
    })
    table = headline.tau_table(intervals).splitlines()
    assert table == headline.HEADER + [
        "| `static_rank` | 0.54 | [0.25, 0.78] | above random |",
        "| `logme` | 0.11 | [-0.19, 0.39] | indistinguishable from random |",
        "| `hscore` | n/a | n/a | undefined |",
    ]
    assert all(headline.ROW.match(line) for line in table[2:])
    # --into rewrites only what lies between the markers
    csv, page = tmp_path / "tau_intervals.csv", tmp_path / "page.md"
    intervals.to_csv(csv, index=False)
    page.write_text(f"before\n{headline.BEGIN}\nold\n{headline.END}\nafter\n")
    headline.main([str(csv), "--into", str(page)])
    text = page.read_text()
    assert text.startswith("before\n") and text.endswith(f"{headline.END}\nafter\n") and "old" not in text
    assert headline.table_between_markers(text) == table


def test_the_generator_refuses_a_table_that_is_not_an_analysis(tmp_path):
    csv = tmp_path / "other.csv"
    pd.DataFrame({"dataset": ["ALL"], "score": ["logme"]}).to_csv(csv, index=False)
    with pytest.raises(SystemExit) as exit_:
        headline.main([str(csv)])
    assert exit_.value.code == 2
