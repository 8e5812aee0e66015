#!/usr/bin/env bash
# Keeps the documentation references inside the repository (issue 16, item 8).
#
#   bash scripts/docs-refs.sh           rewrite references that point outside the repository
#   bash scripts/docs-refs.sh --check   only check; exit 1 with the list of failures
#   bash scripts/docs-refs.sh --list    print every section reference and the document it means
#
# What is checked:
# - every section reference `§N[.M...]` in the tracked text files resolves to a heading with that
#   number in the document it refers to: docs/PROTOCOL.md unless the reference follows another
#   document's name (`RFC 6455 §5.2`, `PERF_BASELINES §5`, which means docs/PERF_BASELINES.md)
#   or stands in docs/PERF_BASELINES.md itself; RFC sections are not checked;
# - a section named by its title (`STYLE.md "Sans-IO core"`) is a heading of that docs/ file;
# - no tracked file links into the steering repository beside the clone (`../shared/...`) or to
#   its `research/` notes. scripts/test.sh is the one exception: it runs the acceptance smoke
#   check from there when it exists.
#
# What the rewrite does (idempotent: running it twice changes nothing the second time):
# - `../shared/spec/PROTOCOL.md` → docs/PROTOCOL.md, `../shared/STYLE.md` → docs/STYLE.md,
#   `../shared/research/X.md` and `research/X.md` → docs/X.md (when docs/X.md exists). Code
#   comments get the path from the repository root; markdown files get a link relative to their
#   own directory.
# - `§9 item N` → `§9.N` (the items of PROTOCOL.md §9 are numbered headings in docs/PROTOCOL.md).
# A bare `PROTOCOL.md §N` already means docs/PROTOCOL.md (docs/ARCHITECTURE.md says so).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=rewrite
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --list) mode=list ;;
  *) echo "usage: bash scripts/docs-refs.sh [--check | --list]" >&2; exit 64 ;;
esac
command -v python3 >/dev/null || { echo "docs-refs: python3 is needed (scripts/install-test-deps.sh installs it)" >&2; exit 1; }
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "docs-refs: run inside the git repository (it reads the tracked files)" >&2; exit 1; }

exec python3 - "$mode" <<'PY'
import os, re, subprocess, sys

mode = sys.argv[1]

# Files never rewritten nor checked: fuzz inputs are bytes, not text; this script describes the
# patterns it rewrites; scripts/test.sh legitimately runs the smoke check beside the clone.
SKIP_PREFIXES = ("fuzz/corpus/", "fuzz/artifacts/")
SELF = "scripts/docs-refs.sh"
OUTSIDE_ALLOWED = {"scripts/test.sh"}

# Documents whose sections are checked, by the name a reference uses before `§`.
SECTION_DOCS = {"PROTOCOL": "docs/PROTOCOL.md", "PERF_BASELINES": "docs/PERF_BASELINES.md"}

SHARED = r"\.\./" + "shared"  # spelled in two parts so this file does not contain the link
REWRITES = [
    (re.compile(SHARED + r"/spec/PROTOCOL\.md"), "docs/PROTOCOL.md"),
    (re.compile(SHARED + r"/STYLE\.md"), "docs/STYLE.md"),
    (re.compile(r"(?:" + SHARED + r"/|(?<![\w./-]))research/([A-Z][A-Z_]*\.md)"), r"docs/\1"),
]
ITEM = re.compile(r"§9 item (\d+)")
OUTSIDE = re.compile(SHARED + r"/|(?<![\w./-])research/[A-Z][A-Z_]*\.md")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")
TITLE = re.compile(r"^#{1,6}\s+(?:\d+(?:\.\d+)*\.?\s+)?(.+?)\s*$")
# A section named by its title: `STYLE.md "Sans-IO core"`, `docs/CLUSTER.md`, "Joining a node".
NAMED = re.compile(r"\b([A-Z][A-Z_]*\.md)`?,? \"([^\"\n<]+)\"")
# What may stand between a document's name and its section, or between two sections of one
# list: `PROTOCOL.md §2.1, §2.5`, `RFC 6455 §7.4.1–§7.4.2`, a comment marker on the next line.
BETWEEN = re.compile(r"(?:[\s,;`'\"/!*#–-]|and|or|to|§\d+(?:\.\d+)*)*$")
DOC_NAME = re.compile(r"(RFC\s*\d+|[A-Za-z][\w-]*\.md|PERF_BASELINES|PROTOCOL)$")


def tracked_text_files():
    out = subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True).stdout
    for name in out.decode().split("\0"):
        if not name or name.startswith(SKIP_PREFIXES) or name == SELF or not os.path.isfile(name):
            continue
        with open(name, "rb") as f:
            data = f.read()
        if b"\0" in data:
            continue
        try:
            yield name, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def rewrite(name, text):
    new = ITEM.sub(r"§9.\1", text)
    for pattern, target in REWRITES:
        def repl(m, target=target):
            path = m.expand(target)
            if not os.path.isfile(path):
                return m.group(0)  # nothing to point at yet: --check reports it
            if name.endswith(".md"):
                rel = os.path.relpath(path, os.path.dirname(name) or ".")
                return f"[{path}]({rel})" if not name.startswith("docs/") else f"[{rel}]({rel})"
            return path
        new = pattern.sub(repl, new)
    # A markdown link in backticks renders as code: drop the backticks around links we made.
    if name.endswith(".md"):
        new = re.sub(r"`(\[[^\]`]+\]\([^)`]+\))`", r"\1", new)
    return new


def titles(path):
    """The lower-cased titles of a markdown file's headings, numbers left out."""
    found = []
    with open(path, encoding="utf-8") as f:
        in_code = False
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            m = None if in_code else TITLE.match(line)
            if m:
                found.append(m.group(1).lower())
    return found


def headings(path):
    found = set()
    with open(path, encoding="utf-8") as f:
        in_code = False
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            m = None if in_code else HEADING.match(line)
            if m:
                found.add(m.group(1))
    return found


def document_of(name, text, start):
    """The document a `§` at `start` of file `name` refers to: the one named just before it, else
    the file itself when it is one of SECTION_DOCS, else PROTOCOL; None for an RFC."""
    before = text[max(0, start - 200):start]
    m = BETWEEN.search(before)
    rest = before[: m.start()] if m else before
    d = DOC_NAME.search(rest)
    if not d:
        own = [doc for doc, path in SECTION_DOCS.items() if path == name]
        return own[0] if own else "PROTOCOL"
    word = d.group(1)
    if word.startswith("RFC"):
        return None
    word = word[:-3] if word.endswith(".md") else word
    return word


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def check():
    failures = []
    known = {doc: headings(path) for doc, path in SECTION_DOCS.items() if os.path.isfile(path)}
    for doc, path in SECTION_DOCS.items():
        if doc not in known:
            failures.append(f"{path}: missing")
    refs = 0
    for name, text in tracked_text_files():
        for m in SECTION.finditer(text):
            doc = document_of(name, text, m.start())
            if doc is None:
                continue  # an RFC section
            where = f"{name}:{line_of(text, m.start())}"
            if doc not in SECTION_DOCS:
                failures.append(f"{where}: §{m.group(1)} of {doc}, a document that is not in docs/")
                continue
            refs += 1
            if doc in known and m.group(1) not in known[doc]:
                failures.append(
                    f"{where}: §{m.group(1)} has no heading in {SECTION_DOCS[doc]}")
        for m in NAMED.finditer(text):
            path = "docs/" + m.group(1)
            if not os.path.isfile(path):
                continue  # not one of our docs (e.g. the generated BENCHMARKS.md)
            want = m.group(2).lower()
            if not any(t.startswith(want) for t in titles(path)):
                failures.append(
                    f"{name}:{line_of(text, m.start())}: {path} has no heading \"{m.group(2)}\"")
        for m in ITEM.finditer(text):
            failures.append(f"{name}:{line_of(text, m.start())}: write `§9.{m.group(1)}`, not `{m.group(0)}`")
        if name not in OUTSIDE_ALLOWED:
            for m in OUTSIDE.finditer(text):
                failures.append(f"{name}:{line_of(text, m.start())}: points outside the repository: {m.group(0)}")
    if failures:
        print(f"docs-refs: {len(failures)} problem(s); `bash scripts/docs-refs.sh` fixes the rewritable ones")
        for f in failures:
            print(f"  {f}")
        sys.exit(1)
    print(f"docs-refs: ok ({refs} section references resolve; nothing points outside the repository)")


if mode == "check":
    check()
elif mode == "list":
    for name, text in tracked_text_files():
        for m in SECTION.finditer(text):
            doc = document_of(name, text, m.start()) or "RFC (not checked)"
            print(f"{name}:{line_of(text, m.start())}: §{m.group(1)} -> {doc}")
else:
    changed = []
    for name, text in tracked_text_files():
        if name in OUTSIDE_ALLOWED:
            continue
        new = rewrite(name, text)
        if new != text:
            with open(name, "w", encoding="utf-8") as f:
                f.write(new)
            changed.append(name)
    for name in changed:
        print(f"docs-refs: rewrote {name}")
    print(f"docs-refs: {len(changed)} file(s) changed")
PY
