#!/usr/bin/env python3
"""Check that every measured figure in RFC.md (and docs/wg-summary.md)
comes from a results file.

A figure is a number with a unit (×, ms, µs, MB, %, tok/s, s, tokens), or
a run of numbers sharing one ("5401 / 7150 ms", "46.1 vs 5980 ms",
"39× to 164×"). Each must be traced:

- In the table of §5 ("Measurements"), whose last column names a section of
  benches/RESULTS.md, a figure in a model's column must appear in that
  section of that model.
- Anywhere else, the figure must appear in the results file its
  paragraph, list item or table names (benches/**/RESULTS*.md,
  benches/**/BREAK-EVEN.md, tests/spec/*/RESULTS.md, RESULTS-gpu.md), or,
  where it names none, in benches/RESULTS.md, the full run: with its unit
  or as a bare number (per-run lists are written bare).

"Appear" means a number there that rounds to the figure at the precision
the RFC writes it ("about 131×" is traced by 130.87×). A figure from an
earlier run, where the RFC cites that run, is listed in EARLIER_RUNS and
checked in that commit's file. What is not
measured (arithmetic, sizes of files, settings, a named test's facts) is
listed in NOT_MEASURED below, each with where it comes from; the list is
short on purpose, and an entry whose text is gone from the RFC is an error
too, so it cannot outlive its figure.

Exit status 1 names each untraced figure with its line.
"""

import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What is checked: the RFC, and the cover letter that quotes it.
DOCUMENTS = ["RFC.md", "docs/wg-summary.md"]

UNIT = r"(?:×|ms|µs|MB|GB|KB|%|tok/s|s\b|(?:-| )tokens?\b)"
NUM = r"\d[\d,]*(?:\.\d+)?"
JOIN = r"\s*(?:/|vs|and|to|–|or)\s*"
FIGURE = re.compile(rf"(?<![\w.#-])({NUM}(?:\s?{UNIT})?(?:{JOIN}{NUM}(?:\s?{UNIT})?)*)\s?({UNIT})")

# Figures from an earlier run, kept where the RFC says why: a piece of the
# RFC's text around each, and the commit and results file it is from. The
# script checks that the number is in that file at that commit.
EARLIER_RUNS = {
    "depth 316 2.69× as fast": ("761b7a9", "benches/RESULTS.md"),
}

# Figures that are not measurements, by a piece of the RFC's text around
# them, and where each comes from.
NOT_MEASURED = {
    "10 Gbit/s link in about 24 ms": "arithmetic: 29.4 MB at 10 Gbit/s, and said so in the text",
    "context 2048": "a setting, from benches/RESULTS.md's header",
}


def results_files():
    patterns = ["benches/**/RESULTS*.md", "benches/**/BREAK-EVEN.md", "tests/spec/*/RESULTS.md", "RESULTS-gpu.md"]
    files = []
    for p in patterns:
        files += glob.glob(os.path.join(ROOT, p), recursive=True)
    return sorted(set(files))


def numbers(text):
    """Every number in text, as floats (thousands separators dropped)."""
    return [float(n.replace(",", "")) for n in re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", text) if n.replace(",", "")]


def paragraph_scopes(doc_lines, files):
    """For each line, the results files its paragraph, list item or table
    names, if any: a figure next to a file's name must come from that
    file."""
    named = re.compile(r"[\w./-]*(?:RESULTS[\w-]*|BREAK-EVEN)\.md")
    scopes, start = [None] * len(doc_lines), 0
    item = re.compile(r"^\s*(?:\d+\.|[-*]) ")
    for end in range(len(doc_lines) + 1):
        if end == len(doc_lines) or not doc_lines[end].strip() or (end > start and item.match(doc_lines[end])):
            block = " ".join(doc_lines[start:end])
            names = set(named.findall(block))
            scope = sorted({f for f in files for n in names if f.endswith(n.lstrip("./")) or f.endswith("/" + n)})
            for i in range(start, end):
                scopes[i] = scope or None
            start = end if end < len(doc_lines) and doc_lines[end].strip() else end + 1
    return scopes


def decimals(figure):
    return len(figure.split(".")[1]) if "." in figure else 0


def traced(value_text, pool):
    """Whether a number in pool rounds to value_text at its precision."""
    value = float(value_text.replace(",", ""))
    places = decimals(value_text)
    half = 0.5 * 10 ** -places
    return any(abs(n - value) <= half + 1e-9 for n in pool)


def sections(path):
    """benches/RESULTS.md by (model, section heading): its text."""
    out, model, head, buf = {}, None, None, []
    for line in open(path, encoding="utf-8"):
        if line.startswith("## "):
            if head:
                out[(model, head)] = "".join(buf)
            model, head, buf = line[3:].split(":")[0].strip(), None, []
        elif line.startswith("### "):
            if head:
                out[(model, head)] = "".join(buf)
            head, buf = line[4:].strip(), []
        else:
            buf.append(line)
    if head:
        out[(model, head)] = "".join(buf)
    return out


def measurement_table(rfc_lines):
    """Rows of §5's table: (line number, [cells])."""
    start = next(i for i, l in enumerate(rfc_lines) if l.startswith("## 5. Measurements"))
    rows = []
    for i in range(start, len(rfc_lines)):
        l = rfc_lines[i]
        if l.startswith("## ") and i > start:
            break
        if l.startswith("|") and not l.startswith("|---"):
            rows.append((i + 1, [c.strip() for c in l.strip().strip("|").split("|")]))
    return rows


def figures(text):
    """Each figure's numbers in text."""
    for m in FIGURE.finditer(text):
        yield m.group(0), re.findall(NUM, m.group(1))


def main():
    docs = {name: open(os.path.join(ROOT, name), encoding="utf-8").read() for name in DOCUMENTS}
    rfc = "\n".join(docs.values())
    files = results_files()
    # Each results file read once: its numbers, for every figure it scopes.
    in_file = {f: numbers(open(f, encoding="utf-8").read()) for f in files}
    full_run = os.path.join(ROOT, "benches/RESULTS.md")
    bench = sections(full_run)
    known = {**NOT_MEASURED, **EARLIER_RUNS}
    models = {"SmolLM2-135M": "smollm2", "gemma-3-270m": "gemma3"}

    problems, checked = [], 0
    for key, source in NOT_MEASURED.items():
        if key not in rfc:
            problems.append(f"NOT_MEASURED entry no longer in RFC.md: {key!r} ({source})")

    for key, (commit, path) in EARLIER_RUNS.items():
        if key not in rfc:
            problems.append(f"EARLIER_RUNS entry no longer in RFC.md: {key!r}")
            continue
        shown = subprocess.run(["git", "-C", ROOT, "show", f"{commit}:{path}"], capture_output=True, text=True)
        wanted = [n for _, nums in figures(key) for n in nums]
        if shown.returncode != 0:
            shallow = subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--is-shallow-repository"], capture_output=True, text=True
            )
            if shallow.stdout.strip() == "true":
                print(f"note: {commit} is not in this shallow clone; {key!r} not checked")
                continue
            problems.append(f"EARLIER_RUNS: cannot read {commit}:{path}: {shown.stderr.strip()}")
        elif not all(traced(n, numbers(shown.stdout)) for n in wanted):
            problems.append(f"EARLIER_RUNS: {wanted} not all in {commit}:{path}")
        checked += len(wanted)

    skip = set()
    header = None
    for lineno, cells in measurement_table(docs["RFC.md"].splitlines()):
        if header is None:
            header = cells
            continue
        section = cells[-1]
        for col, cell in enumerate(cells[1:-1], start=1):
            model = models.get(header[col])
            text = bench.get((model, section))
            if text is None:
                # Prefix match: the table names a section by its start.
                text = next((t for (m, h), t in bench.items() if m == model and h.startswith(section)), None)
            if text is None:
                if cell not in ("–", "-"):
                    problems.append(f"RFC.md:{lineno}: no section {section!r} for {model} in benches/RESULTS.md")
                continue
            local = numbers(text)
            for fig, nums in figures(cell):
                for n in nums:
                    checked += 1
                    if not traced(n, local):
                        problems.append(f"RFC.md:{lineno}: {n} (in {fig!r}) is not in {model}'s {section!r}")
        skip.add(lineno)

    for name in DOCUMENTS:
        doc_lines = docs[name].splitlines()
        scopes = paragraph_scopes(doc_lines, files)
        for i, line in enumerate(doc_lines, start=1):
            if name == "RFC.md" and i in skip:
                continue
            context = " ".join(doc_lines[max(0, i - 2) : i + 1])
            for fig, nums in figures(line):
                if any(k in context for k in known if any(n in k for n in nums)):
                    continue
                for n in nums:
                    checked += 1
                    # A figure whose paragraph names no results file is from the full run.
                    scope = scopes[i - 1] or [full_run]
                    if not traced(n, [x for f in scope for x in in_file[f]]):
                        where = ", ".join(os.path.relpath(f, ROOT) for f in scope)
                        problems.append(f"{name}:{i}: {n} (in {fig!r}) is not in {where}")

    for p in problems:
        print(p)
    print(f"{checked} figures checked against {len(files)} results files; {len(problems)} not traced")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
