"""Write a bench run's tables, plot and reproducing command into BENCHMARKS.md.

The section between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` is replaced by what
``llm-surgeon bench`` measured (``DIR/results.json``), so the page shows the run's own numbers and
nothing typed by hand; the plot is drawn next to the page as ``docs/bench-NAME.png``.

    python benchmarks/update_benchmarks_md.py runs/bench --name smollm2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from llm_surgeon.bench import render_markdown, render_plot, reproduce_commands
from llm_surgeon.runtime.files import atomic_write_text


def bench_section(results: dict, bench_dir: str, plot: str | None) -> str:
    machine = results.get("machine", {})
    lines = [
        "Reproduce (resumable: rerunning skips every run already in `results.json`):",
        "",
        "```bash",
        "export LLM_SURGEON_DATA=../shared/data",
        *reproduce_commands(results, bench_dir),
        "```",
        "",
        f"Machine: {machine.get('processor', '?')}, {machine.get('cpus', '?')} CPUs, "
        f"{machine.get('platform', '?')}. Peak RSS is each run's own process (a fresh child per run).",
        "",
        render_markdown(results).rstrip(),
    ]
    if plot:
        lines += ["", f"![WikiText-2 perplexity against size kept]({plot})"]
    return "\n".join(lines)


def replace_section(page: str, name: str, body: str) -> str:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    if start not in page or end not in page:
        raise SystemExit(f"update_benchmarks_md: BENCHMARKS.md has no {start} ... {end} markers")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench_dir", type=Path, help="the --out folder of an llm-surgeon bench run")
    parser.add_argument("--name", default="smollm2", help="which marked section of the page to replace")
    parser.add_argument("--page", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()
    results = json.loads((args.bench_dir / "results.json").read_text())
    plot = None
    target = args.page.parent / "docs" / f"bench-{args.name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    if render_plot(results, target):  # drawn anew, so the page gets the current plot style
        plot = str(target.relative_to(args.page.parent))
    elif (args.bench_dir / "results.png").exists():
        shutil.copyfile(args.bench_dir / "results.png", target)
        plot = str(target.relative_to(args.page.parent))
    body = bench_section(results, str(args.bench_dir), plot)
    atomic_write_text(args.page, replace_section(args.page.read_text(), args.name, body))
    print(f"updated {args.page} section {args.name!r} from {args.bench_dir / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
