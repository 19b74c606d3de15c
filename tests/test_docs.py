"""The specifications the code cites are in the repository, and every cited section exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["spamo", "search", "evaluation", "configs", "tests", "benchmarks", "cli.py"]
CITATION = re.compile(r"(?<![\w/])((?:docs/)?(?:method|model|data)\.md) sections? (\d+)(?:(?: and |-)(\d+))?")


def source_files():
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in files:
            if file.suffix in {".py", ".toml", ".yaml", ".md"} and "__pycache__" not in file.parts:
                yield file


def headings(doc: Path) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"^## (\d+)\.", doc.read_text(), flags=re.MULTILINE)}


def test_every_cited_section_of_the_specifications_exists():
    sections = {"docs/method.md": headings(ROOT / "docs/method.md"), "docs/data.md": headings(ROOT / "docs/data.md")}
    assert sections["docs/method.md"] == set(range(1, 9)) and sections["docs/data.md"] == {1, 2, 3, 4}
    found, broken = 0, []
    for file in source_files():
        if file.name == "test_docs.py":
            continue
        for line_no, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            for match in CITATION.finditer(line):
                name, first, last = match.group(1), int(match.group(2)), match.group(3)
                found += 1
                wanted = set(range(first, int(last) + 1)) if last else {first}
                if name not in sections or not wanted <= sections[name]:
                    broken.append(f"{file.relative_to(ROOT)}:{line_no}: {match.group(0)}")
    assert found >= 20, "the citations were not found: has their wording changed?"
    assert not broken, "citations of files that are not in docs/, or of missing sections:\n" + "\n".join(broken)
