"""Train an AddSR student by adversarial diffusion distillation (see training/README.md).

Single process (one GPU or CPU):
    python training/train.py --config training/configs/addsr_official.yaml --set train.output_dir=runs/a
Several GPUs / nodes (plain torch.distributed, one process per GPU):
    torchrun --nproc_per_node 8 training/train.py --config my.yaml
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint host:29500 \
        training/train.py --config my.yaml
Resume: --resume latest (or a checkpoint folder). Export only: --export-only CHECKPOINT [--out DIR].
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from addsr_core.training.config import TrainConfigError, _deep_merge, load_config, parse_override  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML or JSON config (defaults: the official recipe)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (JSON-parsed), e.g. --set train.batch_size=4; repeatable")
    p.add_argument("--resume", help="'latest' or a checkpoint folder (same as train.resume_from)")
    p.add_argument("--max-steps", type=int, help="stop after this many more steps (checkpoint first with --set)")
    p.add_argument("--export-only", metavar="CHECKPOINT", help="export a checkpoint's EMA student, no training")
    p.add_argument("--out", help="export folder (default <output_dir>/export/addsr-student)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides: dict = {}
    for item in args.set:
        overrides = _deep_merge(overrides, parse_override(item))
    if args.resume:
        overrides = _deep_merge(overrides, {"train": {"resume_from": args.resume}})
    try:
        cfg = load_config(args.config, overrides)
    except TrainConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.export_only:
        from addsr_core.training.export import export_checkpoint

        paths = export_checkpoint(cfg, args.export_only, args.out)
        print(f"exported {paths['release']} and {paths['packed']}")
        return 0
    from addsr_core.training.trainer import Trainer

    trainer = Trainer(cfg)
    ctx, finished = trainer.ctx, False
    try:
        trainer.train(max_steps=args.max_steps)
        finished = True
    finally:
        trainer.tracker.close()
        # Drop the DDP wrapper (it holds the process group) before the group goes, and leave
        # together: a rank tearing gloo down while its peer is still in it can abort at exit.
        del trainer
        gc.collect()
        if finished:
            ctx.barrier()
        ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
