"""Reads an Autobahn|Testsuite fuzzingclient report (index.json), prints a summary by
section, writes it into docs/AUTOBAHN.md between its markers, and exits non-zero when a case
failed, was unclean, closed with the wrong code, or when fewer cases ran than expected.

Python 3 (the suite itself runs on 2.7; this only reads its files).

usage: summary.py INDEX_JSON CASES_DIR DOC EXPECTED_CASES
"""
import io
import json
import os
import re
import sys

# Verdicts that pass, best first. Everything else (FAILED, UNCLEAN, WRONG CODE,
# UNIMPLEMENTED, or a verdict this script does not know) fails the run.
ACCEPTED = ["OK", "NON-STRICT", "INFORMATIONAL"]
COLUMNS = ACCEPTED + ["WRONG CODE", "UNCLEAN", "FAILED", "UNIMPLEMENTED"]
BEGIN = "<!-- autobahn-summary:begin (written by scripts/autobahn.sh) -->"
END = "<!-- autobahn-summary:end -->"


def case_key(case_id):
    return [int(p) for p in case_id.split(".")]


def verdict(result):
    """The worse of the case's protocol and closing verdicts."""
    pair = [result.get("behavior"), result.get("behaviorClose")]
    bad = [v for v in pair if v not in ACCEPTED]
    if bad:
        return bad[0]
    return max(pair, key=ACCEPTED.index)


def description(cases_dir, result):
    """Autobahn's one-line description of a case, from its per-case report."""
    path = os.path.join(cases_dir, result.get("reportfile", ""))
    try:
        with io.open(path, encoding="utf-8") as f:
            text = json.load(f).get("description", "")
    except (OSError, ValueError):
        return ""
    text = re.split(r"<br|\n", text)[0]
    return re.sub(r"\s+", " ", text).strip()


def render(results, cases_dir):
    sections = {}
    for case_id, result in results.items():
        sections.setdefault(int(case_id.split(".")[0]), []).append(verdict(result))
    used = [c for c in COLUMNS if any(c in v for v in sections.values())]
    extra = sorted(set(v for vs in sections.values() for v in vs) - set(COLUMNS))
    cols = used + extra
    lines = ["| section | cases | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for s in sorted(sections):
        vs = sections[s]
        lines.append("| %d | %d | %s |" % (s, len(vs), " | ".join(str(vs.count(c)) for c in cols)))
    every = [v for vs in sections.values() for v in vs]
    lines.append("| **all** | **%d** | %s |" % (len(every), " | ".join("**%d**" % every.count(c) for c in cols)))
    lines.append("")
    odd = sorted((c for c in results if verdict(results[c]) != "OK"), key=case_key)
    if odd:
        lines.append("Cases not plainly OK (protocol verdict / closing verdict):")
        lines.append("")
        for c in odd:
            r = results[c]
            lines.append("- %s: %s / %s. %s" % (c, r.get("behavior"), r.get("behaviorClose"), description(cases_dir, r)))
    else:
        lines.append("Every case OK.")
    return "\n".join(lines) + "\n"


def write_doc(doc, summary, odd):
    """Replaces the summary between the markers; names the cases that are not OK and that
    the hand-written text around it does not explain."""
    with io.open(doc, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        print("autobahn: %s has no summary markers; not updated" % doc, file=sys.stderr)
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with io.open(doc, "w", encoding="utf-8") as f:
        f.write(head + BEGIN + "\n" + summary + END + tail)
    prose = head + tail
    unexplained = [c for c in odd if not re.search(r"(?<![\d.])%s(?![\d])" % re.escape(c), prose)]
    if unexplained:
        print("autobahn: note: %s should say why these are acceptable: %s" % (doc, " ".join(unexplained)))


def main():
    index, cases_dir, doc, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with io.open(index, encoding="utf-8") as f:
        agents = json.load(f)
    if len(agents) != 1:
        print("autobahn: expected one agent in %s, found %d" % (index, len(agents)), file=sys.stderr)
        return 1
    results = list(agents.values())[0]
    summary = render(results, cases_dir)
    print(summary)
    write_doc(doc, summary, sorted((c for c in results if verdict(results[c]) != "OK"), key=case_key))
    failed = sorted((c for c in results if verdict(results[c]) not in ACCEPTED), key=case_key)
    status = 0
    if failed:
        print("autobahn: %d case(s) not OK, NON-STRICT or INFORMATIONAL: %s" % (len(failed), " ".join(failed)),
              file=sys.stderr)
        status = 1
    if len(results) < expected:
        print("autobahn: only %d of the %d cases ran" % (len(results), expected), file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
