"""The ``tag`` command: RAM tags per image as ``<stem>.txt``, the prompt files the trainer reads."""
from __future__ import annotations

from pathlib import Path

from .cli_jobs import plan_jobs, resolve_device, resolve_dtype, write_atomically


def run_tag(args) -> int:
    from tqdm import tqdm

    from .imaging.prepare import load_image
    from .ram import load_ram

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.input.is_dir() and not args.output.exists():
        args.output.mkdir(parents=True)
    jobs = plan_jobs(args.input, args.output, args.overwrite, suffix=".txt")
    if not jobs:
        print("nothing to do: every tag file exists (use --overwrite to redo them)")
        return 0
    _, tagger = load_ram(args.ram, args.dape, tag_list=args.tag_list, dtype=dtype, device=device)
    failures = 0
    for src, dst in tqdm(jobs, desc="tagging", unit="image"):
        try:
            image = load_image(src).rgb.to(device, dtype)
            write_text(dst, tagger.tags(image)[0] + "\n")
        except (ValueError, OSError) as err:
            failures += 1
            print(f"skipped {src.name}: {err}")
    print(f"done: {len(jobs) - failures} written, {failures} failed")
    return 1 if failures else 0


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))  # resume never trusts a half-written file
